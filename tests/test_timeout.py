"""``timeout``, ``checkpoint()`` and ``remaining()``: deadlines, async and sync."""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from fractions import Fraction
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from starlette._utils import is_async_callable
from trio.testing import MockClock

from bgtasks import checkpoint, remaining, timeout

# Real-time limits for the tests that must use the real clock: a sleep of
# PAST_IT always ends after a deadline of TINY.
TINY = 0.01
PAST_IT = 0.03


def _virtual_clock_backends() -> list[Any]:
    return [
        pytest.param("asyncio", id="asyncio"),
        pytest.param("trio-mockclock", id="trio-mockclock"),
    ]


class TestAsyncDeadline:
    """Async functions are cancelled at the deadline (trio on a virtual clock)."""

    @pytest.fixture(params=_virtual_clock_backends())
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        """Asyncio with tiny real delays; trio with an instant MockClock."""
        if request.param == "asyncio":
            return "asyncio"
        return ("trio", {"clock": MockClock(autojump_threshold=0)})

    @pytest.mark.anyio
    async def test_result_within_deadline(self) -> None:
        """A call that finishes in time returns its result untouched."""

        @timeout(30)
        async def double(x: int) -> int:
            await anyio.sleep(0)
            return x * 2

        assert await double(21) == 42

    @pytest.mark.anyio
    async def test_deadline_raises_builtin_timeout_error(self) -> None:
        """A call past its deadline is cancelled and raises the builtin TimeoutError."""

        @timeout(TINY)
        async def hang() -> None:
            await anyio.sleep_forever()

        with pytest.raises(TimeoutError, match=r"hang timed out after 0\.01 s"):
            await hang()

    @pytest.mark.anyio
    async def test_swallowed_cancellation_is_cancelled_again(self) -> None:
        """A task that swallows the cancellation is cancelled at its next await."""
        swallowed: list[bool] = []

        @timeout(TINY)
        async def stubborn() -> str:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                swallowed.append(True)  # and carries on, as badly written code does
            await anyio.sleep(3600)
            return "finished anyway"

        with pytest.raises(TimeoutError):
            await stubborn()
        assert swallowed == [True]

    @pytest.mark.anyio
    async def test_own_timeout_error_passes_through(self) -> None:
        """A TimeoutError the function raises itself is not reworded."""
        own = TimeoutError("the SMTP server timed out")

        @timeout(30)
        async def send() -> None:
            raise own

        with pytest.raises(TimeoutError) as caught:
            await send()
        assert caught.value is own

    @pytest.mark.anyio
    async def test_outer_deadline_cancels_inner_longer_timeout(self) -> None:
        """A longer inner timeout does not extend the outer one."""

        @timeout(3600)
        async def inner() -> None:
            await anyio.sleep_forever()

        @timeout(TINY)
        async def outer() -> None:
            await inner()

        with pytest.raises(TimeoutError, match="outer timed out"):
            await outer()

    @pytest.mark.anyio
    async def test_remaining_counts_down_and_nests_to_earliest(self) -> None:
        """remaining() reports the earliest of nested deadlines, on the loop's clock."""
        seen: dict[str, float | None] = {}

        @timeout(3600)
        async def long_inner() -> None:
            seen["long inside short"] = remaining()

        @timeout(10)
        async def short_inner() -> None:
            seen["short inside long"] = remaining()

        @timeout(20)
        async def outer() -> None:
            seen["outer"] = remaining()
            await long_inner()
            await short_inner()
            seen["outer again"] = remaining()

        await outer()
        assert remaining() is None
        assert 0 < (seen["outer"] or 0) <= 20
        assert 0 < (seen["long inside short"] or 0) <= 20
        assert 0 < (seen["short inside long"] or 0) <= 10
        assert 10 < (seen["outer again"] or 0) <= 20


@pytest.mark.parametrize(
    "anyio_backend",
    [pytest.param(("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio")],
)
@pytest.mark.anyio
async def test_remaining_follows_the_virtual_clock_exactly() -> None:
    """On trio's MockClock remaining() is exact: the deadline is on the loop clock."""

    @timeout(30)
    async def report() -> tuple[float | None, float | None]:
        first = remaining()
        await anyio.sleep(12)
        return first, remaining()

    assert await report() == (30.0, 18.0)


@pytest.mark.anyio
async def test_checkpoint_in_async_code_raises_once_deadline_passed() -> None:
    """In async code, checkpoint() raises TimeoutError once the deadline passed."""

    @timeout(TINY)
    async def busy() -> None:
        time.sleep(PAST_IT)  # blocks the loop, so the cancel scope cannot fire
        assert remaining() == 0.0
        checkpoint()

    with pytest.raises(TimeoutError, match="busy passed the deadline"):
        await busy()


@pytest.mark.anyio
async def test_async_deadline_reaches_worker_threads() -> None:
    """A sync function run in a worker thread sees the async caller's deadline."""

    @timeout(5)
    def nested_sync() -> float | None:
        return remaining()

    @timeout(3600)
    def nested_sync_longer() -> float | None:
        return remaining()

    @timeout(10)
    async def outer() -> tuple[float | None, ...]:
        return (
            await anyio.to_thread.run_sync(remaining),
            await anyio.to_thread.run_sync(nested_sync),
            await anyio.to_thread.run_sync(nested_sync_longer),
        )

    plain, shorter, longer = await outer()
    assert 0 < (plain or 0) <= 10
    assert 0 < (shorter or 0) <= 5
    assert 0 < (longer or 0) <= 10


@pytest.mark.anyio
async def test_checkpoint_in_worker_raises_host_cancellation() -> None:
    """checkpoint() in a worker thread raises the loop's cancellation once cancelled."""
    started = anyio.Event()
    raised: list[type[BaseException]] = []

    def work() -> None:
        anyio.from_thread.run_sync(started.set)
        try:
            for _ in range(10_000):  # bounded, so a broken checkpoint fails, not hangs
                checkpoint()
                time.sleep(0.001)
        except BaseException as exc:
            raised.append(type(exc))
            raise

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, work)
            await started.wait()
            scope.cancel()

    assert scope.cancelled_caught
    assert raised == [anyio.get_cancelled_exc_class()]


@pytest.mark.anyio
async def test_checkpoint_in_worker_is_quiet_when_not_cancelled() -> None:
    """checkpoint() in the worker thread of a live task without deadline is quiet."""

    def work() -> str:
        checkpoint()
        return "done"

    assert await anyio.to_thread.run_sync(work) == "done"


def test_checkpoint_and_remaining_without_deadline() -> None:
    """Outside any timeout, checkpoint() does nothing and remaining() is None."""
    checkpoint()
    assert remaining() is None


def test_checkpoint_in_plain_thread() -> None:
    """checkpoint() in a thread that anyio did not start does not raise."""
    errors: list[BaseException] = []

    def work() -> None:
        try:
            checkpoint()
        except BaseException as exc:  # pragma: no cover - the failure being tested
            errors.append(exc)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert errors == []


def test_sync_result_within_deadline() -> None:
    """A sync call that finishes in time returns its result, with no warning."""

    @timeout(30)
    def double(x: int) -> int:
        checkpoint()
        return x * 2

    assert double(21) == 42


def test_sync_checkpoint_raises_after_deadline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """In a sync function, checkpoint() raises TimeoutError once the deadline passed."""
    steps: list[int] = []

    @timeout(TINY)
    def fetch_pages() -> None:
        for page in range(3):
            checkpoint()
            steps.append(page)
            time.sleep(PAST_IT)

    with pytest.raises(TimeoutError, match=r"fetch_pages passed the deadline of its"):
        fetch_pages()
    assert steps == [0]
    assert caplog.records == []  # the TimeoutError says it all: no overrun warning


def test_sync_remaining_counts_down_to_zero() -> None:
    """remaining() is the time left in a sync function, then 0.0, never negative."""

    @timeout(TINY)
    def work() -> tuple[float | None, float | None]:
        before = remaining()
        time.sleep(PAST_IT)
        return before, remaining()

    before, after = work()
    assert 0 < (before or 0) <= TINY
    assert after == 0.0


def test_sync_nested_deadlines_take_the_earliest() -> None:
    """Nested sync timeouts publish the earliest deadline, then restore the outer."""
    seen: dict[str, float | None] = {}

    @timeout(3600)
    def long_inner() -> None:
        seen["long inside short"] = remaining()

    @timeout(5)
    def short_inner() -> None:
        seen["short inside long"] = remaining()

    @timeout(20)
    def outer() -> None:
        long_inner()
        short_inner()
        seen["outer again"] = remaining()

    outer()
    assert 0 < (seen["long inside short"] or 0) <= 20
    assert 0 < (seen["short inside long"] or 0) <= 5
    assert 5 < (seen["outer again"] or 0) <= 20


def test_sync_overrun_returns_result_and_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync call that returns late keeps its result and logs a WARNING with extras."""

    @timeout(TINY)
    def slow() -> str:
        time.sleep(PAST_IT)
        return "late but done"

    with caplog.at_level(logging.WARNING, logger="bgtasks"):
        assert slow() == "late but done"
    [record] = caplog.records
    assert (record.name, record.levelno) == ("bgtasks", logging.WARNING)
    assert "after the deadline of its 0.01 s timeout" in record.getMessage()
    assert vars(record)["task_name"].endswith("slow")
    assert vars(record)["timeout"] == TINY
    assert vars(record)["overrun"] > 0


def test_sync_deadline_in_plain_thread() -> None:
    """A sync timeout works in a thread of its own, with its own deadline."""
    results: list[float | None] = []

    @timeout(5)
    def work() -> None:
        checkpoint()
        results.append(remaining())

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    [left] = results
    assert 0 < (left or 0) <= 5


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_deadline_outliving_its_event_loop_falls_back_to_monotonic(
    backend: str,
) -> None:
    """A context captured under an async timeout still answers after the loop ended."""
    captured: list[contextvars.Context] = []

    @timeout(30)
    async def capture() -> None:
        captured.append(contextvars.copy_context())

    anyio.run(capture, backend=backend)
    left = captured[0].run(remaining)
    assert 0 < (left or 0) <= 30


@pytest.mark.parametrize(
    "seconds",
    [1, 0.5, Fraction(1, 4), timedelta(seconds=3), timedelta(milliseconds=1)],
)
def test_accepted_seconds(seconds: Any) -> None:
    """Positive ints, floats, other real numbers and timedeltas are accepted."""

    @timeout(seconds)
    def work() -> str:
        return "ok"

    assert work() == "ok"


@pytest.mark.parametrize(
    ("seconds", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        (timedelta(0), ValueError),
        (timedelta(seconds=-5), ValueError),
        (True, TypeError),
        ("30", TypeError),
        (None, TypeError),
    ],
)
def test_bad_seconds_fail_at_decoration(seconds: Any, error: type[Exception]) -> None:
    """Zero, negative, NaN, infinite, bool and non-numbers fail naming `seconds`."""
    with pytest.raises(error, match=r"timeout\(seconds\)"):
        timeout(seconds)


def test_bare_decorator_explains_the_fix() -> None:
    """``@timeout`` without its argument says to write ``@timeout(30)``."""
    with pytest.raises(TypeError, match=r"write @timeout\(30\)"):

        @timeout  # type: ignore[arg-type]
        def work() -> None: ...


def _sync_task(email: str, count: int = 1) -> str:
    """Send something."""
    return email * count


async def _async_task(email: str, count: int = 1) -> str:
    """Send something, asynchronously."""
    return email * count


@pytest.mark.parametrize("func", [_sync_task, _async_task])
def test_wrapper_kind_and_metadata_are_kept(func: Callable[..., Any]) -> None:
    """Sync stays sync and async stays async (as Starlette sees it), metadata kept."""
    wrapped = timeout(5)(func)
    assert is_async_callable(func) == is_async_callable(wrapped)
    assert inspect.iscoroutinefunction(func) == inspect.iscoroutinefunction(wrapped)
    assert (func.__name__, func.__doc__) == (wrapped.__name__, wrapped.__doc__)
    assert wrapped.__wrapped__ is func  # type: ignore[attr-defined]
    assert inspect.signature(func) == inspect.signature(wrapped)


def test_generators_are_refused() -> None:
    """A generator function is refused at decoration time, via the shared wrapper."""

    def pages() -> Any:
        yield 1

    with pytest.raises(TypeError, match="generator"):
        timeout(5)(pages)
