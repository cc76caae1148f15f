"""``max_concurrency`` and submitting from worker threads."""

from __future__ import annotations

import threading

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from bgtasks import TaskHandle, TaskManager, TaskState

pytestmark = pytest.mark.anyio


async def test_limit_holds() -> None:
    """At most N tasks run at once, and all of them get to run."""
    running = 0
    peak = 0

    async def job(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.001 * (n % 3))
        running -= 1

    async with TaskManager(max_concurrency=3) as manager:
        handles = [manager.spawn(job, n) for n in range(20)]
        states = [manager.get(h.id) for h in handles]
        assert all(s is not None and s.state is TaskState.PENDING for s in states)
        for handle in handles:
            await handle.wait(timeout=5)
    assert peak == 3


async def test_queue_is_fifo() -> None:
    """Waiting tasks get a slot in submission order."""
    order: list[int] = []

    async def job(n: int) -> None:
        order.append(n)
        await anyio.sleep(0)

    async with TaskManager(max_concurrency=1) as manager:
        handles = [manager.spawn(job, n) for n in range(20)]
        for handle in handles:
            await handle.wait(timeout=5)
    assert list(range(20)) == order


async def test_queued_tasks_report_pending_until_started() -> None:
    """A queued task stays PENDING, without a start time, while others run."""
    gate = anyio.Event()
    async with TaskManager(max_concurrency=1) as manager:
        first = manager.spawn(gate.wait)
        second = manager.spawn(gate.wait)
        await anyio.sleep(0.01)
        assert [
            i.state for i in map(manager.get, [first.id, second.id]) if i is not None
        ] == [TaskState.RUNNING, TaskState.PENDING]
        gate.set()
        assert (await second.wait(timeout=5)).state == TaskState.SUCCEEDED


async def test_spawn_from_a_worker_thread() -> None:
    """``spawn`` works from a worker thread, also when it must queue."""
    gate = anyio.Event()

    async def job(n: int) -> int:
        await gate.wait()
        return n

    async with TaskManager(max_concurrency=2) as manager:

        def submit() -> list[TaskHandle]:
            return [manager.spawn(job, n) for n in range(4)]

        handles = await anyio.to_thread.run_sync(submit)
        gate.set()
        results = [(await h.wait(timeout=5)).result for h in handles]
    assert results == [0, 1, 2, 3]


async def test_spawn_from_a_foreign_thread() -> None:
    """A plain ``threading.Thread`` can spawn too, through the loop's token."""
    box: list[TaskHandle] = []
    async with TaskManager() as manager:
        thread = threading.Thread(
            target=lambda: box.append(manager.spawn(anyio.sleep, 0))
        )
        thread.start()
        await anyio.to_thread.run_sync(thread.join)
        info = await box[0].wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED


async def test_get_and_list_from_a_worker_thread() -> None:
    """Queries are safe from worker threads."""
    async with TaskManager() as manager:
        handle = manager.spawn(anyio.sleep, 0)
        await handle.wait(timeout=5)
        info, listed = await anyio.to_thread.run_sync(
            lambda: (manager.get(handle.id), manager.list())
        )
    assert info is not None
    assert [info] == listed
