"""Backoff strategies: how long ``retry`` waits after each failed attempt.

A strategy is any callable ``(attempt) -> seconds``, called with the number of
the attempt that just failed (1 after the first failure). The built-in ones
validate their arguments when built, print as the call that built them, and
hold no mutable state, so one strategy serves any number of concurrent calls.
Decorrelated jitter needs the previous delay of the same call: ``retry`` keeps
it per call and passes it to ``Backoff._next_delay``.
"""

from __future__ import annotations

import math
import random
from typing import Literal, final

__all__ = ["Backoff", "Jitter", "exponential", "fixed", "linear"]

Jitter = Literal["full", "equal", "decorrelated", "none"]
_JITTERS: tuple[str, ...] = ("full", "equal", "decorrelated", "none")


class Backoff:
    """A delay strategy built by `fixed`, `linear` or `exponential`.

    Call it with an attempt number (1 for the first failure) to get the delay in
    seconds before the next attempt. Any plain callable ``(attempt) -> float``
    works with ``retry`` as well; this class only adds validation, a readable
    ``repr`` and, for decorrelated jitter, the memory of the previous delay.
    """

    __slots__ = ()

    def __call__(self, attempt: int) -> float:
        """Return the delay in seconds after failed attempt ``attempt`` (>= 1)."""
        return self._next_delay(attempt, None, jitter=True)

    def _next_delay(
        self, attempt: int, previous: float | None, *, jitter: bool
    ) -> float:
        """Delay after ``attempt``; ``previous`` is this call's last delay, if any.

        ``jitter=False`` (set by ``instant_retries(jitter=False)``) drops the
        random part so that tests see exact delays.
        """
        raise NotImplementedError

    def _constant(self) -> float | None:
        """Return the delay after every attempt if it never varies, else ``None``."""
        return None


@final
class _Fixed(Backoff):
    __slots__ = ("_seconds",)

    def __init__(self, seconds: float) -> None:
        self._seconds = _seconds("seconds", seconds)

    def __repr__(self) -> str:
        return f"fixed({self._seconds!r})"

    def _next_delay(
        self, attempt: int, previous: float | None, *, jitter: bool
    ) -> float:
        return self._seconds

    def _constant(self) -> float | None:
        return self._seconds


@final
class _Linear(Backoff):
    __slots__ = ("_initial", "_maximum", "_step")

    def __init__(self, initial: float, step: float, maximum: float) -> None:
        self._initial = _seconds("initial", initial)
        self._step = _seconds("step", step)
        self._maximum = _maximum(maximum, self._initial, allow_inf=True)

    def __repr__(self) -> str:
        return f"linear({self._initial!r}, {self._step!r}, maximum={self._maximum!r})"

    def _next_delay(
        self, attempt: int, previous: float | None, *, jitter: bool
    ) -> float:
        return min(self._maximum, self._initial + self._step * (attempt - 1))


@final
class _Exponential(Backoff):
    __slots__ = ("_initial", "_jitter", "_maximum", "_multiplier", "_rng")

    def __init__(
        self,
        initial: float,
        multiplier: float,
        maximum: float,
        jitter: Jitter,
        rng: object,
    ) -> None:
        self._initial = _seconds("initial", initial)
        if self._initial == 0:
            raise ValueError(
                "exponential(initial=0) never grows: give initial > 0, or use "
                "backoff.fixed(0) to retry without waiting."
            )
        self._multiplier = _number("multiplier", multiplier)
        if self._multiplier < 1:
            raise ValueError(
                f"exponential(multiplier={multiplier!r}) would shrink the delays: "
                "give multiplier >= 1 (2 doubles each delay)."
            )
        self._maximum = _maximum(maximum, self._initial, allow_inf=False)
        if jitter not in _JITTERS:
            raise ValueError(
                f"exponential(jitter={jitter!r}) is not a jitter mode: use one of "
                f"{', '.join(map(repr, _JITTERS))}."
            )
        if rng is not None and not isinstance(rng, random.Random):
            raise TypeError(
                "exponential(rng=...) takes a random.Random instance, got "
                f"{type(rng).__name__}: pass rng=random.Random(42) for repeatable "
                "jitter."
            )
        self._jitter = jitter
        self._rng: random.Random | None = rng

    def __repr__(self) -> str:
        return (
            f"exponential(initial={self._initial!r}, multiplier={self._multiplier!r}, "
            f"maximum={self._maximum!r}, jitter={self._jitter!r})"
        )

    def _base(self, attempt: int) -> float:
        """Return the capped delay without jitter: initial * multiplier ** (n - 1)."""
        try:
            grown = self._initial * self._multiplier ** (attempt - 1)
        except OverflowError:  # a huge attempt number: the cap applies anyway
            return self._maximum
        return min(self._maximum, grown)

    def _next_delay(
        self, attempt: int, previous: float | None, *, jitter: bool
    ) -> float:
        base = self._base(attempt)
        if not jitter or self._jitter == "none":
            return base
        uniform = (self._rng or random).uniform
        if self._jitter == "full":
            return uniform(0.0, base)
        if self._jitter == "equal":
            return base / 2 + uniform(0.0, base / 2)
        # Decorrelated (AWS): between initial and (multiplier + 1) x the previous
        # delay of this call; called without memory, the un-jittered previous one.
        if previous is None:
            previous = self._base(attempt - 1) if attempt > 1 else self._initial
        upper = max(self._initial, previous * (self._multiplier + 1))
        return min(self._maximum, uniform(self._initial, upper))


def fixed(seconds: float) -> Backoff:
    """Wait the same number of seconds after every failed attempt.

    Args:
        seconds: the delay, >= 0. ``fixed(0)`` retries at once.

    Raises:
        ValueError: ``seconds`` is negative, NaN or infinite.
        TypeError: ``seconds`` is not a number.

    Examples:
        >>> fixed(0.5)(3)
        0.5
    """
    return _Fixed(seconds)


def linear(initial: float, step: float, maximum: float = math.inf) -> Backoff:
    """Wait ``initial``, then ``step`` seconds longer after each failure.

    The delay after attempt ``n`` is ``min(maximum, initial + step * (n - 1))``.

    Args:
        initial: the first delay, >= 0.
        step: added after each further failure, >= 0.
        maximum: cap on any delay, >= ``initial`` (no cap by default).

    Raises:
        ValueError: a negative or NaN delay, or ``maximum < initial``.
        TypeError: an argument is not a number.

    Examples:
        >>> [linear(1.0, 0.5, maximum=2.0)(n) for n in (1, 2, 3, 4)]
        [1.0, 1.5, 2.0, 2.0]
    """
    return _Linear(initial, step, maximum)


def exponential(
    initial: float = 0.1,
    multiplier: float = 2.0,
    maximum: float = 10.0,
    jitter: Jitter = "full",
    *,
    rng: random.Random | None = None,
) -> Backoff:
    """Grow the delay geometrically, randomized by jitter (the default strategy).

    Without jitter the delay after attempt ``n`` is
    ``min(maximum, initial * multiplier ** (n - 1))``. Jitter spreads the
    retries of many clients that failed together, so they do not hit the
    recovering service in waves:

    - ``"full"`` (default): uniform between 0 and that delay. AWS's architecture
      blog ("Exponential Backoff And Jitter", Marc Brooker, 2015) found it makes
      the fewest calls and the least contention.
    - ``"equal"``: half the delay, plus uniform up to the other half: never
      retries almost at once, at the cost of more contention.
    - ``"decorrelated"``: uniform between ``initial`` and ``multiplier + 1``
      times the previous delay of the same call (x3 by default, the blog's
      formula), capped at ``maximum``; close to full jitter in the blog.
    - ``"none"``: the exact delays, for when only one client retries.

    Args:
        initial: the first delay (before jitter), > 0.
        multiplier: growth factor per failure, >= 1.
        maximum: cap on any delay, finite and >= ``initial``.
        jitter: ``"full"``, ``"equal"``, ``"decorrelated"`` or ``"none"``.
        rng: a ``random.Random`` to draw jitter from; pass a seeded one
            (``random.Random(42)``) for repeatable delays in tests.

    Raises:
        ValueError: a delay out of range, ``multiplier < 1``, an unknown jitter.
        TypeError: an argument of the wrong type.

    Examples:
        >>> strategy = exponential(initial=0.5, maximum=4.0, jitter="none")
        >>> [strategy(n) for n in (1, 2, 3, 4, 5)]
        [0.5, 1.0, 2.0, 4.0, 4.0]
    """
    return _Exponential(initial, multiplier, maximum, jitter, rng)


def _number(name: str, value: object) -> float:
    """Return ``value`` as a float, refusing bools, NaN and non-numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"{name} must be a number of seconds, got {type(value).__name__} {value!r}."
        )
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"{name} must be a number of seconds, got NaN.")
    return result


def _seconds(name: str, value: object) -> float:
    """Return ``value`` as a delay, refusing negative and infinite ones."""
    result = _number(name, value)
    if result < 0 or math.isinf(result):
        raise ValueError(
            f"{name}={value!r} is not a usable delay: give a finite number of "
            "seconds >= 0."
        )
    return result


def _maximum(value: object, initial: float, *, allow_inf: bool) -> float:
    """Return ``value`` as a cap >= ``initial``, infinite only if ``allow_inf``."""
    result = _number("maximum", value)
    if result == math.inf and not allow_inf:
        raise ValueError(
            f"maximum={value!r}: exponential delays need a finite cap, e.g. "
            "maximum=10.0."
        )
    if result < initial:
        raise ValueError(
            f"maximum={value!r} is below initial={initial!r}: give maximum >= initial."
        )
    return result
