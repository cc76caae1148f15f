"""Cancelling tracked tasks: async promptly, sync cooperatively, pending never runs."""

from __future__ import annotations

import threading

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from bgtasks import TaskManager, TaskState, checkpoint, current_task

pytestmark = pytest.mark.anyio


async def test_cancel_running_async_task_promptly(task_handles: bool) -> None:
    """A running async task is cancelled at its next await and ends CANCELLED."""
    started = anyio.Event()
    reached_end = []

    async def job() -> None:
        started.set()
        await anyio.sleep_forever()
        reached_end.append(True)  # pragma: no cover - never reached

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        await started.wait()
        assert await manager.cancel(handle.id)
        info = await handle.wait(timeout=5)
        assert info.state == TaskState.CANCELLED
        assert info.cancel_requested
        assert not await manager.cancel(handle.id)  # finished: False
        assert not await handle.cancel()
    assert reached_end == []


async def test_cancel_sync_task_is_cooperative(task_handles: bool) -> None:
    """A sync task keeps running, flagged, until it checks for cancellation."""
    started = threading.Event()
    release = threading.Event()
    flags = []

    def job() -> None:
        started.set()
        release.wait(5)
        flags.append(current_task().cancel_requested)
        anyio.from_thread.check_cancelled()

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        await anyio.to_thread.run_sync(started.wait, 5)
        assert await handle.cancel()
        info = manager.get(handle.id)
        assert info is not None
        assert (info.state, info.cancel_requested) == (TaskState.RUNNING, True)
        release.set()
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.CANCELLED
    assert flags == [True]


async def test_sync_task_stopped_at_checkpoint_leaves_the_caller_uncancelled(
    task_handles: bool,
) -> None:
    """A sync task cancelled at checkpoint() leaves no cancellation in the caller."""
    # anyio < 4.14 on asyncio: the thread's CancelledError is not one the task's
    # own cancel scope recognizes, and it used to cancel the manager's owner.
    reached, release = threading.Event(), threading.Event()

    def job() -> None:
        reached.set()
        release.wait(5)
        checkpoint()

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        await anyio.to_thread.run_sync(reached.wait, 5)
        assert await manager.cancel(handle.id)
        release.set()
        info = await handle.wait(timeout=5)
        await anyio.sleep(0.01)  # cancelled here by the leaked cancellation
        after = manager.spawn(job)
        assert (await after.wait(timeout=5)).state == TaskState.SUCCEEDED
    assert info.state == TaskState.CANCELLED


async def test_sync_task_that_ignores_cancel_finishes_normally(
    task_handles: bool,
) -> None:
    """A sync task that never checks ends SUCCEEDED, with cancel_requested set."""
    started = threading.Event()
    release = threading.Event()

    def job() -> str:
        started.set()
        release.wait(5)
        return "done anyway"

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        await anyio.to_thread.run_sync(started.wait, 5)
        assert await manager.cancel(handle.id)
        release.set()
        info = await handle.wait(timeout=5)
    assert (
        info.state,
        info.result,
        info.cancel_requested,
    ) == (TaskState.SUCCEEDED, "done anyway", True)


async def test_async_task_that_swallows_cancel_succeeds(task_handles: bool) -> None:
    """An async task that catches the cancellation and returns ends SUCCEEDED."""
    started = anyio.Event()

    async def stubborn() -> str:
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            return "cleaned up"
        return "unreachable"  # pragma: no cover

    async with TaskManager() as manager:
        handle = manager.spawn(stubborn)
        await started.wait()
        await handle.cancel()
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED
    assert info.cancel_requested


async def test_cancel_pending_task_never_runs(task_handles: bool) -> None:
    """A task waiting for a concurrency slot is cancelled without running."""
    gate = anyio.Event()
    ran = []

    async def job(n: int) -> None:
        ran.append(n)
        await gate.wait()

    async with TaskManager(max_concurrency=1) as manager:
        first = manager.spawn(job, 1)
        second = manager.spawn(job, 2)
        third = manager.spawn(job, 3)
        await anyio.sleep(0.01)
        assert await second.cancel()
        info = second.info()
        assert info is not None
        assert (
            info.state,
            info.started_at,
            info.cancel_requested,
        ) == (TaskState.CANCELLED, None, True)
        gate.set()
        await first.wait(timeout=5)
        await third.wait(timeout=5)
    assert ran == [1, 3]


async def test_cancel_spawned_before_it_starts(task_handles: bool) -> None:
    """A task cancelled right after spawn, before the loop runs it, never runs."""
    ran = []

    async def job() -> None:
        ran.append(True)  # pragma: no cover - must not run

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        assert await manager.cancel(handle.id)
        info = await handle.wait(timeout=5)
        await anyio.sleep(0.01)
    assert info.state == TaskState.CANCELLED
    assert ran == []


async def test_cancel_unknown_returns_false() -> None:
    """Cancelling an id the manager never saw returns False."""
    async with TaskManager() as manager:
        assert not await manager.cancel("no-such-task")
