"""A sync @retry task stops between attempts when cancelled or past its deadline."""

from __future__ import annotations

import threading
import time

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from bgtasks import RetryEvent, TaskManager, TaskState, _retry, retry, timeout

pytestmark = pytest.mark.anyio


@pytest.fixture
def blocking_sleep(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Make a plain sleep of retry block until the test sets the returned event.

    Code that still waited with a thread sleep would be stuck here until the
    test releases it, then start its next attempt: the tests below would see it.
    """
    release = threading.Event()
    monkeypatch.setattr(_retry, "_sync_sleep", lambda _seconds: release.wait(5))
    return release


async def test_cancel_during_a_sync_wait_ends_the_task_cancelled(
    blocking_sleep: threading.Event,
) -> None:
    """TaskManager.cancel ends a sync task's 30 s wait at once; no attempt follows."""
    waiting = threading.Event()
    calls: list[int] = []

    @retry(attempts=3, backoff=30, on_retry=lambda _event: waiting.set())
    def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    async with TaskManager() as manager:
        handle = manager.spawn(flaky)
        assert await anyio.to_thread.run_sync(waiting.wait, 5)
        assert await manager.cancel(handle.id)
        try:
            with anyio.fail_after(2):
                info = await handle.wait()
        finally:
            blocking_sleep.set()
    assert (info.state, len(calls)) == (TaskState.CANCELLED, 1)


async def test_shutdown_during_a_sync_wait_cancels_the_task(
    blocking_sleep: threading.Event,
) -> None:
    """Leaving the manager (shutdown) cancels a sync task waiting to retry."""
    waiting = threading.Event()
    calls: list[int] = []

    @retry(attempts=3, backoff=30, on_retry=lambda _event: waiting.set())
    def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    manager = TaskManager(drain_timeout=0.01)
    async with manager:
        handle = manager.spawn(flaky)
        assert await anyio.to_thread.run_sync(waiting.wait, 5)
    blocking_sleep.set()
    info = manager.get(handle.id)
    assert info is not None
    assert (info.state, len(calls)) == (TaskState.CANCELLED, 1)


async def test_cancelled_host_of_a_worker_thread_starts_no_attempt(
    blocking_sleep: threading.Event,
) -> None:
    """A sync retry in a worker thread whose host was cancelled does not retry."""
    waiting = threading.Event()
    calls: list[int] = []

    @retry(attempts=3, backoff=30, on_retry=lambda _event: waiting.set())
    def flaky() -> None:
        calls.append(1)
        raise ConnectionError("down")

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_when_waiting() -> None:
                await anyio.to_thread.run_sync(waiting.wait, 5)
                scope.cancel()

            tg.start_soon(cancel_when_waiting)
            try:
                with anyio.fail_after(2):
                    await anyio.to_thread.run_sync(flaky)
            finally:
                blocking_sleep.set()
    assert (scope.cancelled_caught, len(calls)) == (True, 1)


def test_no_attempt_starts_after_the_timeout_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sync @timeout that passed during an attempt stops the retries: TimeoutError."""
    sleeps: list[float] = []
    monkeypatch.setattr(_retry, "_sync_sleep", sleeps.append)
    calls: list[int] = []

    @timeout(0.01)
    @retry(attempts=3, backoff=5)
    def slow_and_failing() -> None:
        calls.append(1)
        time.sleep(0.02)
        raise ConnectionError("down")

    with pytest.raises(TimeoutError, match="slow_and_failing"):
        slow_and_failing()
    assert calls == [1]
    assert all(seconds <= 0.01 for seconds in sleeps)


async def test_a_wait_ends_at_the_timeout_deadline_in_a_managed_task(
    blocking_sleep: threading.Event,
) -> None:
    """A 30 s wait under a 0.05 s @timeout ends at the deadline, not after 30 s."""
    events: list[RetryEvent] = []

    @timeout(0.05)
    @retry(attempts=3, backoff=30, on_retry=events.append)
    def flaky() -> None:
        raise ConnectionError("down")

    async with TaskManager() as manager:
        handle = manager.spawn(flaky)
        try:
            with anyio.fail_after(2):
                info = await handle.wait()
        finally:
            blocking_sleep.set()
    assert info.error is not None
    assert (info.error.type, len(events)) == ("TimeoutError", 1)


async def test_a_zero_wait_of_an_async_retry_is_a_cancellation_point() -> None:
    """Cancelled during an attempt that fails, a zero-wait retry starts no attempt."""
    attempts: list[int] = []

    @retry(attempts=5, backoff=0)
    async def task(scope: anyio.CancelScope) -> None:
        attempts.append(len(attempts) + 1)
        scope.cancel()  # no await after it: only retry's zero wait can see it
        raise ConnectionError

    with anyio.CancelScope() as scope:
        await task(scope)
    assert scope.cancelled_caught
    assert attempts == [1]
