"""Bounded history: finished records kept up to a count and an age, memory bounded."""

from __future__ import annotations

import functools
import gc
import time
import tracemalloc
import weakref
from typing import Any

import anyio
import pytest

from bgtasks import TaskManager, TaskState
from bgtasks._manager.records import TaskRecord
from bgtasks._manager.submit import capture

pytestmark = pytest.mark.anyio


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def noop() -> None:
    return None


async def test_oldest_finished_records_go_first() -> None:
    """Beyond ``max_finished`` the oldest finished record is dropped."""
    async with TaskManager(max_finished=3) as manager:
        handles = []
        for _ in range(5):  # one at a time: finish order = submission order
            handles.append(manager.spawn(noop))
            await handles[-1].wait(timeout=5)
        kept = [i.id for i in manager.list()]
    assert [h.id for h in reversed(handles[2:])] == kept
    assert handles[0].info() is None
    assert manager.get(handles[0].id) is None


async def test_finishing_drops_records_in_batches_reads_see_the_limit() -> None:
    """Over ``max_finished``, finishing drops a batch; every read sees the limit."""
    async with TaskManager(max_finished=32) as manager:  # batches of 32 // 16 = 2
        registry = manager._engine.registry
        for _ in range(34):
            await manager.spawn(noop).wait(timeout=5)
        assert len(registry) == 34  # within the batch: nothing dropped yet
        await manager.spawn(noop).wait(timeout=5)
        assert len(registry) == 32  # the 35th finish dropped the oldest three
        for _ in range(2):
            await manager.spawn(noop).wait(timeout=5)
        assert len(manager.list()) == 32  # a read prunes to the limit at once
        assert len(registry) == 32


async def test_active_records_are_never_dropped() -> None:
    """Retention counts finished records only: running ones always stay."""
    gate = anyio.Event()
    async with TaskManager(max_finished=0) as manager:
        running = manager.spawn(gate.wait)
        finished = manager.spawn(noop)
        info = await finished.wait(timeout=5)  # the handle still knows the end
        assert info.state == TaskState.SUCCEEDED
        assert manager.get(finished.id) is None
        assert manager.get(running.id) is not None
        gate.set()


async def test_records_expire_after_the_ttl() -> None:
    """A finished record older than ``finished_ttl`` is gone on the next read."""
    clock = FakeClock()
    async with TaskManager(finished_ttl=60, clock=clock) as manager:
        old = await manager.spawn(noop).wait(timeout=5)
        clock.now += 30
        young = await manager.spawn(noop).wait(timeout=5)
        clock.now += 30
        assert manager.get(old.id) is None
        assert manager.get(young.id) is not None
        clock.now += 31
        assert manager.list() == []


async def test_no_ttl_keeps_records_until_the_count() -> None:
    """``finished_ttl=None`` keeps finished records whatever their age."""
    clock = FakeClock()
    async with TaskManager(finished_ttl=None, clock=clock) as manager:
        info = await manager.spawn(noop).wait(timeout=5)
        clock.now += 10**9
        assert manager.get(info.id) is not None


async def test_reused_ids_do_not_leak_queue_entries() -> None:
    """Reusing one id many times keeps the finish queue bounded."""
    async with TaskManager(max_finished=10_000) as manager:
        await manager.spawn(noop).wait(timeout=5)  # stays at the front
        for _ in range(500):
            await manager.spawn_with_id("same", noop).wait(timeout=5)
        registry = manager._engine.registry
        assert len(registry) == 2
        assert len(registry._finished) <= 2 * 2 + 64 + 1
        assert registry.count(TaskState.SUCCEEDED) == 2


async def test_finish_times_follow_their_records_when_reused_ids_are_dropped() -> None:
    """After the finish queue sheds replaced records, each keeps its own age."""
    clock = FakeClock()  # at 1000
    async with TaskManager(finished_ttl=250, clock=clock) as manager:
        for _ in range(3):  # expire and leave the front of the time array
            await manager.spawn(noop).wait(timeout=5)
        clock.now += 300
        early = await manager.spawn(noop).wait(timeout=5)  # at 1300
        for _ in range(200):  # enough replaced entries to rebuild the queue
            clock.now += 1
            await manager.spawn_with_id("same", noop).wait(timeout=5)  # to 1500
        clock.now += 30
        late = await manager.spawn(noop).wait(timeout=5)  # at 1530
        clock.now = 1549  # ``early`` is 249 s old: kept, to the second
        assert [info.id for info in manager.list()] == [late.id, "same", early.id]
        clock.now += 1
        assert [info.id for info in manager.list()] == [late.id, "same"]
        clock.now = 1750
        assert [info.id for info in manager.list()] == [late.id]


async def test_finish_times_stay_bounded_and_in_step() -> None:
    """Many finishes under a count limit keep the time array small and aligned."""
    clock = FakeClock()
    async with TaskManager(max_finished=10, finished_ttl=100, clock=clock) as manager:
        for _ in range(3000):
            await manager.spawn(noop).wait(timeout=5)
        registry = manager._engine.registry
        assert len(registry._finished) == 10
        assert len(registry._finished_at) - registry._first_time == 10
        assert len(registry._finished_at) <= 2 * 1024 + 10
        clock.now += 50
        fresh = await manager.spawn(noop).wait(timeout=5)
        clock.now += 50  # the 3000 are 100 s old now, ``fresh`` 50 s
        assert [info.id for info in manager.list()] == [fresh.id]


async def test_finished_record_holds_no_arguments_or_frames() -> None:
    """Once finished, nothing keeps the task's arguments or coroutine alive."""

    class Payload:
        pass

    payload = Payload()
    ref = weakref.ref(payload)

    async def job(data: Any) -> None:
        raise ValueError("with a traceback")

    async with TaskManager(log_failures=False) as manager:
        info = await manager.spawn(job, payload).wait(timeout=5)
        del payload
        gc.collect()
        assert ref() is None
        # Retention keeps a tuple of plain values, nothing of the run.
        assert isinstance(manager._engine.registry.get(info.id), tuple)
    assert info.state == TaskState.FAILED


@pytest.mark.parametrize("carrier", ["partial", "closure"])
async def test_arguments_bound_into_the_function_are_not_kept(carrier: str) -> None:
    """A partial or closure submitted as the task is not kept alive after it ends."""

    class Upload:
        pass

    def make_thumbnail(upload: Upload) -> str:
        return "ok"

    upload = Upload()
    ref = weakref.ref(upload)
    func = (
        functools.partial(make_thumbnail, upload)
        if carrier == "partial"
        else (lambda upload=upload: make_thumbnail(upload))
    )
    async with TaskManager(max_finished=0) as manager:
        await manager.spawn(func).wait(timeout=5)
    del upload, func
    gc.collect()
    # Older anyio's idle worker thread keeps its last job's function in a
    # local until its next job, and under load another idle thread may take a
    # job first: give a few, then judge.
    for _ in range(10):
        if ref() is None:
            break
        await anyio.to_thread.run_sync(gc.collect)
    gc.collect()
    assert ref() is None


def _bytes_per_record(count: int, fill: Any) -> float:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        fill(count)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / count


async def test_memory_per_finished_record_is_bounded() -> None:
    """30,000 finished records cost well under 1,000 bytes each (tracemalloc).

    Records are made and finished through the manager's own bookkeeping (the
    same objects a task leaves behind), without running 30,000 event-loop
    tasks under tracemalloc. 30,000 is enough to average out allocator noise
    and stays well inside the test timeout on a loaded machine.
    """
    count = 30_000
    async with TaskManager(max_finished=count) as manager:

        def fill(n: int) -> None:
            for _ in range(n):
                record = TaskRecord(
                    manager._engine, "", "noop", time.time(), noop, (), None, None
                )
                record.run = capture(None)
                manager._engine.register(record, spawned=False)
                manager._engine._finish(record, TaskState.SUCCEEDED, None)

        per_record = _bytes_per_record(count, fill)
        assert count == len(manager._engine.registry)
    print(f"bytes per finished record (bookkeeping): {per_record:.0f}")
    assert per_record < 1000


async def test_memory_per_finished_task_end_to_end() -> None:
    """Tasks really run through spawn leave under 1,000 bytes each behind."""
    count = 10_000
    async with TaskManager(max_finished=count + 1) as manager:
        await manager.spawn(noop).wait(timeout=5)  # lazily built state first

        async def run_all(n: int) -> None:
            # Batches: anyio's and asyncio's task sets keep their peak size.
            for _ in range(0, n, 500):
                handles = [manager.spawn(noop) for _ in range(500)]
                for handle in handles:
                    await handle.wait(timeout=30)

        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            await run_all(count)
            for _ in range(3):  # let the loop run the tasks' done callbacks
                await anyio.sleep(0)
            gc.collect()
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
    per_record = (after - before) / count
    print(f"bytes per finished task (end to end): {per_record:.0f}")
    assert per_record < 1000
