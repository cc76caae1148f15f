"""bgtasks.backoff: exact shapes without jitter, bounds with it, strict arguments."""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from bgtasks import backoff
from bgtasks._backoff import Backoff


def _delays(strategy: Backoff, *, jitter: bool = True, count: int = 6) -> list[float]:
    """Delays of one call, as retry computes them (with the previous delay)."""
    delays: list[float] = []
    previous = None
    for attempt in range(1, count + 1):
        previous = strategy._next_delay(attempt, previous, jitter=jitter)
        delays.append(previous)
    return delays


def test_fixed_is_constant() -> None:
    """fixed(s) returns s after every attempt."""
    strategy = backoff.fixed(0.5)
    assert [strategy(n) for n in (1, 2, 100)] == [0.5, 0.5, 0.5]


def test_fixed_zero_is_allowed() -> None:
    """fixed(0) is the documented way to retry at once."""
    assert backoff.fixed(0)(1) == 0.0


def test_linear_grows_by_step_up_to_maximum() -> None:
    """linear adds ``step`` per failure and stops at ``maximum``."""
    strategy = backoff.linear(1.0, 0.5, maximum=2.0)
    assert [strategy(n) for n in (1, 2, 3, 4)] == [1.0, 1.5, 2.0, 2.0]


def test_linear_without_maximum_keeps_growing() -> None:
    """linear has no cap by default."""
    assert backoff.linear(0, 1)(1001) == 1000.0


def test_exponential_without_jitter_doubles_up_to_maximum() -> None:
    """jitter="none" gives initial * multiplier ** (n - 1), capped."""
    strategy = backoff.exponential(initial=0.5, maximum=4.0, jitter="none")
    assert [strategy(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 4.0, 4.0]


def test_exponential_multiplier() -> None:
    """The multiplier sets the growth factor."""
    strategy = backoff.exponential(initial=1, multiplier=3, maximum=100, jitter="none")
    assert [strategy(n) for n in range(1, 5)] == [1.0, 3.0, 9.0, 27.0]


def test_exponential_huge_attempt_is_capped_not_overflowing() -> None:
    """An attempt number whose power overflows a float yields the cap."""
    assert backoff.exponential(jitter="none")(100_000) == 10.0
    assert 0 <= backoff.exponential()(100_000) <= 10.0


def test_exponential_defaults() -> None:
    """The default strategy starts at 0.1 s, doubles, caps at 10 s, full jitter."""
    assert (
        repr(backoff.exponential())
        == "exponential(initial=0.1, multiplier=2.0, maximum=10.0, jitter='full')"
    )


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 8, 12])
def test_full_jitter_is_between_zero_and_the_exponential(attempt: int) -> None:
    """Full jitter draws uniformly in [0, capped exponential]."""
    strategy = backoff.exponential(initial=0.1, maximum=5.0)
    upper = min(5.0, 0.1 * 2 ** (attempt - 1))
    draws = [strategy(attempt) for _ in range(200)]
    assert all(0 <= d <= upper for d in draws)
    assert len(set(draws)) > 1


@pytest.mark.parametrize("attempt", [1, 2, 3, 9])
def test_equal_jitter_is_in_the_upper_half(attempt: int) -> None:
    """Equal jitter keeps half of the delay and draws the other half."""
    strategy = backoff.exponential(initial=0.2, maximum=10.0, jitter="equal")
    base = min(10.0, 0.2 * 2 ** (attempt - 1))
    assert all(base / 2 <= strategy(attempt) <= base for _ in range(200))


def test_decorrelated_jitter_stays_between_initial_and_three_times_previous() -> None:
    """Decorrelated: each delay in [initial, 3 x previous], capped at maximum."""
    strategy = backoff.exponential(initial=0.1, maximum=3.0, jitter="decorrelated")
    for _ in range(50):
        previous = 0.1
        for delay in _delays(strategy, count=10):
            assert 0.1 <= delay <= min(3.0, previous * 3)
            previous = delay


def test_decorrelated_called_directly_uses_the_plain_exponential_as_previous() -> None:
    """Without a call's memory, the previous delay is the un-jittered exponential."""
    strategy = backoff.exponential(initial=1.0, maximum=100.0, jitter="decorrelated")
    assert all(1.0 <= strategy(1) <= 3.0 for _ in range(100))
    assert all(1.0 <= strategy(3) <= 6.0 for _ in range(100))


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated", "none"])
def test_jitter_off_gives_the_exact_exponential(jitter: Any) -> None:
    """With jitter disabled (instant_retries(jitter=False)) every mode is exact."""
    strategy = backoff.exponential(initial=0.1, maximum=0.5, jitter=jitter)
    assert _delays(strategy, jitter=False, count=4) == [0.1, 0.2, 0.4, 0.5]


@pytest.mark.parametrize("jitter", ["full", "equal", "decorrelated"])
def test_seeded_rng_repeats_the_same_delays(jitter: Any) -> None:
    """rng=random.Random(seed) makes jittered delays repeatable."""
    first = _delays(backoff.exponential(jitter=jitter, rng=random.Random(7)))
    second = _delays(backoff.exponential(jitter=jitter, rng=random.Random(7)))
    assert first == second


def test_repr_shows_the_call() -> None:
    """Each strategy prints as the call that built it."""
    assert repr(backoff.fixed(0.5)) == "fixed(0.5)"
    assert repr(backoff.linear(1, 2)) == "linear(1.0, 2.0, maximum=inf)"


def test_strategies_are_backoff_instances() -> None:
    """The factories return Backoff objects, usable for annotations."""
    assert isinstance(backoff.fixed(1), backoff.Backoff)
    assert isinstance(backoff.linear(1, 1), backoff.Backoff)
    assert isinstance(backoff.exponential(), backoff.Backoff)


def test_base_backoff_has_no_delay_of_its_own() -> None:
    """The base class is abstract: only the factories build usable strategies."""
    with pytest.raises(NotImplementedError):
        Backoff()(1)


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: backoff.fixed(-1), "seconds"),
        (lambda: backoff.fixed(math.inf), "seconds"),
        (lambda: backoff.fixed(math.nan), "seconds"),
        (lambda: backoff.linear(-0.1, 1), "initial"),
        (lambda: backoff.linear(1, -1), "step"),
        (lambda: backoff.linear(2, 1, maximum=1), "maximum"),
        (lambda: backoff.linear(1, 1, maximum=-math.inf), "maximum"),
        (lambda: backoff.exponential(initial=-1), "initial"),
        (lambda: backoff.exponential(initial=0), "initial"),
        (lambda: backoff.exponential(multiplier=0.5), "multiplier"),
        (lambda: backoff.exponential(maximum=math.inf), "maximum"),
        (lambda: backoff.exponential(initial=1, maximum=0.5), "maximum"),
        (lambda: backoff.exponential(jitter="half"), "jitter"),  # type: ignore[arg-type]
    ],
)
def test_bad_values_raise_value_error_naming_the_argument(
    build: Any, argument: str
) -> None:
    """Out-of-range arguments fail at construction with the argument's name."""
    with pytest.raises(ValueError, match=argument):
        build()


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: backoff.fixed("1"), "seconds"),  # type: ignore[arg-type]
        (lambda: backoff.fixed(True), "seconds"),
        (lambda: backoff.linear(1, None), "step"),  # type: ignore[arg-type]
        (lambda: backoff.exponential(rng=42), "rng"),  # type: ignore[arg-type]
    ],
)
def test_bad_types_raise_type_error_naming_the_argument(
    build: Any, argument: str
) -> None:
    """Arguments of the wrong type fail at construction with the argument's name."""
    with pytest.raises(TypeError, match=argument):
        build()
