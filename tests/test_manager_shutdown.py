"""Leaving the manager: drain, then cancel; nothing stays PENDING or RUNNING."""

from __future__ import annotations

import threading

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from bgtasks import TaskManager, TaskState
from bgtasks.exceptions import ManagerNotRunningError

pytestmark = pytest.mark.anyio


async def test_drain_waits_for_tasks_that_finish_in_time() -> None:
    """Tasks that end within the drain timeout end SUCCEEDED."""

    async def job() -> str:
        await anyio.sleep(0.02)
        return "ok"

    manager = TaskManager(drain_timeout=5)
    async with manager:
        handles = [manager.spawn(job) for _ in range(3)]
    for handle in handles:
        info = handle.info()
        assert info is not None
        assert (info.state, info.result) == (TaskState.SUCCEEDED, "ok")


async def test_after_drain_timeout_the_rest_is_cancelled() -> None:
    """Running and pending tasks left at the deadline end CANCELLED."""
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    manager = TaskManager(max_concurrency=1, drain_timeout=0.01)
    async with manager:
        running = manager.spawn(forever)
        pending = manager.spawn(forever)
        await started.wait()
    assert not manager.running
    for handle, was_started in [(running, True), (pending, False)]:
        info = handle.info()
        assert info is not None
        assert info.state == TaskState.CANCELLED
        assert info.cancel_requested
        assert (info.started_at is not None) == was_started
    assert (
        manager.list(state=TaskState.RUNNING) + manager.list(state=TaskState.PENDING)
        == []
    )


async def test_aclose_timeout_zero_cancels_at_once() -> None:
    """``aclose(timeout=0)`` skips the drain."""
    manager = TaskManager(drain_timeout=60)
    await manager.__aenter__()
    handle = manager.spawn(anyio.sleep_forever)
    await anyio.sleep(0.01)
    await manager.aclose(timeout=0)
    info = handle.info()
    assert info is not None
    assert info.state == TaskState.CANCELLED
    with pytest.raises(ManagerNotRunningError):
        manager.spawn(anyio.sleep, 0)


async def test_spawn_during_drain_is_refused() -> None:
    """Once close begins, a task that spawns more work gets ManagerNotRunningError."""
    errors: list[BaseException] = []
    manager = TaskManager(drain_timeout=5)

    async def spawner() -> None:
        await anyio.sleep(0.02)
        try:
            manager.spawn(anyio.sleep, 0)
        except ManagerNotRunningError as exc:
            errors.append(exc)

    async with manager:
        manager.spawn(spawner)
    assert len(errors) == 1


async def test_body_error_skips_the_drain() -> None:
    """If the ``async with`` body raises, tasks are cancelled without waiting."""
    manager = TaskManager(drain_timeout=60)
    handles = []

    async def run() -> None:
        async with manager:
            handles.append(manager.spawn(anyio.sleep_forever))
            await anyio.sleep(0.01)
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await run()
    info = handles[0].info()
    assert info is not None
    assert info.state == TaskState.CANCELLED


async def test_outer_cancellation_during_drain_still_cleans_up() -> None:
    """Cancelling the host while it drains cancels the tasks and propagates."""
    manager = TaskManager(drain_timeout=60)
    with anyio.move_on_after(0.05) as scope:
        async with manager:
            handle = manager.spawn(anyio.sleep_forever)
    assert scope.cancelled_caught
    info = handle.info()
    assert info is not None
    assert info.state == TaskState.CANCELLED
    assert not manager.running


async def test_sync_task_stops_at_its_checkpoint_on_shutdown() -> None:
    """A cooperative sync task is cancelled by shutdown at its next check."""
    started = threading.Event()

    def job() -> None:
        started.set()
        while True:
            anyio.from_thread.check_cancelled()
            threading.Event().wait(0.001)

    manager = TaskManager(drain_timeout=0)
    async with manager:
        handle = manager.spawn(job)
        await anyio.to_thread.run_sync(started.wait, 5)
    info = handle.info()
    assert info is not None
    assert info.state == TaskState.CANCELLED


async def test_close_from_another_task_is_refused() -> None:
    """``aclose`` from a task other than the one that entered raises clearly."""
    manager = TaskManager()
    errors: list[RuntimeError] = []

    async def closer() -> None:
        try:
            await manager.aclose()
        except RuntimeError as exc:
            errors.append(exc)

    async with manager:
        async with anyio.create_task_group() as tg:
            tg.start_soon(closer)
        assert manager.running
    assert len(errors) == 1
    assert "task that entered" in str(errors[0])
