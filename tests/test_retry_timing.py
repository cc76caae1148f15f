"""bgtasks.retry in time: exact waits, deadlines, and cancellation at any moment."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from bgtasks import RetryEvent, _retry, backoff, retry
from bgtasks._context import running_task_var

pytestmark = pytest.mark.anyio


class FakeTime:
    """A clock that moves only when retry sleeps or a test advances it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleep(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    """Replace retry's clocks and sleeps, sync and async, with one fake time."""
    fake = FakeTime()
    monkeypatch.setattr(_retry, "_sync_clock", fake.clock)
    monkeypatch.setattr(_retry, "_sync_sleep", fake.sleep)
    monkeypatch.setattr(_retry, "_async_clock", fake.clock)
    monkeypatch.setattr(_retry, "_async_sleep", fake.async_sleep)
    return fake


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """Run the test with a def task and with an async def task."""
    return str(request.param)


async def run(kind: str, body: Callable[[], object], **options: Any) -> Any:
    """Call a task of ``kind`` that runs ``body``, decorated by ``retry(**options)``."""
    if kind == "sync":

        @retry(**options)
        def task() -> object:
            return body()

        return task()

    @retry(**options)
    async def atask() -> object:
        return body()

    return await atask()


def failing(fake: FakeTime | None = None, *, takes: float = 0.0) -> Callable[[], None]:
    """A body that always fails, taking ``takes`` seconds of fake time."""

    def body() -> None:
        if fake is not None:
            fake.now += takes
        raise ConnectionError("down")

    return body


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        (backoff.fixed(0.5), [0.5, 0.5, 0.5]),
        (backoff.linear(1, 2, maximum=4), [1.0, 3.0, 4.0]),
        (backoff.exponential(initial=0.5, jitter="none"), [0.5, 1.0, 2.0]),
    ],
)
async def test_waits_follow_the_backoff(
    kind: str, fake_time: FakeTime, strategy: backoff.Backoff, expected: list[float]
) -> None:
    """Between four attempts retry sleeps exactly what the strategy says."""
    with pytest.raises(ConnectionError):
        await run(kind, failing(), attempts=4, backoff=strategy)
    assert expected == fake_time.sleeps


async def test_jittered_waits_are_what_the_hook_is_told(
    kind: str, fake_time: FakeTime
) -> None:
    """The delay in each RetryEvent is the one slept, within the jitter bounds."""
    events: list[RetryEvent] = []
    with pytest.raises(ConnectionError):
        await run(kind, failing(), attempts=5, on_retry=events.append)
    assert [e.delay for e in events] == fake_time.sleeps
    assert all(0 <= d <= 0.1 * 2**i for i, d in enumerate(fake_time.sleeps))


async def test_deadline_stops_before_a_wait_that_would_end_past_it(
    kind: str, fake_time: FakeTime
) -> None:
    """With 0.4 s waits and a 1 s budget: attempts at 0, 0.4 and 0.8, then stop."""
    calls: list[float] = []

    def body() -> None:
        calls.append(fake_time.now - 100)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError) as info:
        await run(kind, body, attempts=10, backoff=0.4, deadline=1.0)
    assert pytest.approx([0.0, 0.4, 0.8]) == calls
    if sys.version_info >= (3, 11):
        assert "past the 1s deadline" in info.value.__notes__[0]


async def test_a_wait_may_end_exactly_at_the_deadline(
    kind: str, fake_time: FakeTime
) -> None:
    """A wait that ends on the deadline itself is still taken."""
    with pytest.raises(ConnectionError):
        await run(kind, failing(), attempts=10, backoff=0.5, deadline=1.0)
    assert fake_time.sleeps == [0.5, 0.5]


async def test_deadline_counts_the_attempts_time(
    kind: str, fake_time: FakeTime
) -> None:
    """Attempts of 0.3 s and waits of 0.1 s fit three attempts in a 1 s budget."""
    with pytest.raises(ConnectionError):
        await run(
            kind, failing(fake_time, takes=0.3), attempts=10, backoff=0.1, deadline=1.0
        )
    assert fake_time.sleeps == [0.1, 0.1]


async def test_deadline_spent_by_the_first_attempt_means_no_retry(
    kind: str, fake_time: FakeTime
) -> None:
    """An attempt that overran the budget is not retried, even with zero waits."""
    with pytest.raises(ConnectionError) as info:
        await run(kind, failing(fake_time, takes=5), backoff=0, deadline=1.0)
    assert fake_time.sleeps == []
    if sys.version_info >= (3, 11):
        assert "after 1 attempt in 5s" in info.value.__notes__[0]


async def test_elapsed_counts_from_the_call_start_with_a_deadline(
    kind: str, fake_time: FakeTime
) -> None:
    """With deadline=, RetryEvent.elapsed includes the first attempt's duration."""
    events: list[RetryEvent] = []
    with pytest.raises(ConnectionError):
        await run(
            kind,
            failing(fake_time, takes=1),
            attempts=3,
            backoff=0.5,
            deadline=60,
            on_retry=events.append,
        )
    assert [e.elapsed for e in events] == [1.0, 2.5]


async def test_elapsed_counts_from_the_first_failure_without_a_deadline(
    kind: str, fake_time: FakeTime
) -> None:
    """Without deadline= no clock is read before the first failure."""
    events: list[RetryEvent] = []
    with pytest.raises(ConnectionError):
        await run(
            kind,
            failing(fake_time, takes=1),
            attempts=3,
            backoff=0.5,
            on_retry=events.append,
        )
    assert [e.elapsed for e in events] == [0.0, 1.5]


async def test_deadline_with_result_retry_returns_the_last_result(
    kind: str, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected result at the deadline is returned, and the reason logged."""
    results = iter(range(10))
    with caplog.at_level("WARNING", logger="bgtasks"):
        result = await run(
            kind,
            lambda: next(results),
            attempts=10,
            backoff=0.4,
            deadline=1.0,
            retry_if=lambda r: True,
        )
    assert result == 2
    assert "deadline" in caplog.records[-1].getMessage()


async def test_deadline_success_after_a_failure(kind: str, fake_time: FakeTime) -> None:
    """A call that recovers within the deadline returns normally."""
    outcomes = iter([ConnectionError(), None])

    def body() -> str:
        error = next(outcomes)
        if error:
            raise error
        return "ok"

    assert await run(kind, body, backoff=0.1, deadline=1.0) == "ok"


async def test_deadline_success_at_once(kind: str, fake_time: FakeTime) -> None:
    """With a deadline, a first-try success returns at once."""
    assert await run(kind, lambda: "ok", deadline=1.0) == "ok"
    assert fake_time.sleeps == []


async def test_real_short_waits(kind: str) -> None:
    """Without fakes, retry really sleeps (time.sleep / anyio.sleep) and recovers."""
    outcomes = iter([ConnectionError(), ConnectionError(), None])

    def body() -> str:
        error = next(outcomes)
        if error:
            raise error
        return "ok"

    assert await run(kind, body, backoff=0.001, deadline=10) == "ok"


async def test_cancelled_during_an_attempt_is_not_retried() -> None:
    """Cancelling a running attempt ends the call: no retry, hook or predicate."""
    started = anyio.Event()
    seen: list[object] = []
    calls: list[int] = []

    def catch_all(exc: Exception) -> bool:
        seen.append(exc)
        return True

    @retry(on=catch_all, on_retry=seen.append, backoff=0)
    async def task() -> None:
        calls.append(1)
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(task)
        await started.wait()
        tg.cancel_scope.cancel()
    assert calls == [1]
    assert seen == []


async def test_cancelled_during_a_retry_attempt_is_not_retried() -> None:
    """Cancelling attempt 2 ends the call there, and attempt 3 never starts."""
    started = anyio.Event()
    calls: list[int] = []

    @retry(attempts=5, backoff=0)
    async def task() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError
        started.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(task)
        await started.wait()
        tg.cancel_scope.cancel()
    assert calls == [1, 1]


async def test_cancelled_during_a_wait_stops_at_once() -> None:
    """An hour-long backoff wait is cancelled at once (the test would time out)."""
    waiting = anyio.Event()
    calls: list[int] = []

    @retry(backoff=3600, on_retry=lambda event: waiting.set())
    async def task() -> None:
        calls.append(1)
        raise ConnectionError

    async with anyio.create_task_group() as tg:
        tg.start_soon(task)
        await waiting.wait()
        tg.cancel_scope.cancel()
    assert calls == [1]


async def test_an_outer_timeout_cancels_the_wait() -> None:
    """move_on_after around a retried call still fires during a long wait."""
    calls: list[int] = []

    @retry(backoff=3600)
    async def task() -> None:
        calls.append(1)
        raise ConnectionError

    with anyio.move_on_after(0.01) as scope:
        await task()
    assert scope.cancelled_caught
    assert calls == [1]


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(
            ("trio", {"clock": MockClock(autojump_threshold=0)}), id="trio-mock"
        )
    ],
)
async def test_virtual_time_with_trio_mock_clock() -> None:
    """Under trio's MockClock the real anyio waits and deadline run in virtual time."""
    # trio only: asyncio has no virtual clock; the fake_time tests cover both.
    calls: list[float] = []
    start = anyio.current_time()

    @retry(
        attempts=10,
        backoff=backoff.exponential(initial=1, maximum=60, jitter="none"),
        deadline=10,
    )
    async def task() -> None:
        calls.append(anyio.current_time() - start)
        await anyio.sleep(0.3)
        raise ConnectionError

    with pytest.raises(ConnectionError):
        await task()
    assert pytest.approx([0.0, 1.3, 3.6, 7.9]) == calls
    assert pytest.approx(8.2) == anyio.current_time() - start


class RecordingTask:
    """A managed task as retry sees it: records attempts and announced waits."""

    id = "task-1"

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def owns_retry(self, func: object) -> bool:
        return True

    def record_attempt(self, attempt: int) -> None:
        self.calls.append(("attempt", attempt))

    def record_retry_wait(self, until: float) -> None:
        self.calls.append(("wait until", until))


async def test_a_managed_task_is_told_when_its_next_attempt_starts(
    kind: str, fake_time: FakeTime
) -> None:
    """Before each wait, retry tells the running task the wall-clock next start."""
    task = RecordingTask()
    token = running_task_var.set(task)
    try:
        before = time.time()
        with pytest.raises(ConnectionError):
            await run(kind, failing(), attempts=3, backoff=backoff.fixed(30))
        after = time.time()
    finally:
        running_task_var.reset(token)
    assert [what for what, _ in task.calls] == [
        "wait until",
        "attempt",
        "wait until",
        "attempt",
    ]
    assert [value for what, value in task.calls if what == "attempt"] == [2, 3]
    waits = [value for what, value in task.calls if what == "wait until"]
    assert all(before + 30 <= until <= after + 30 for until in waits)
