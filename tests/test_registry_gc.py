"""Kept finished records in frozen chunks: what the collector walks, and correctness.

The registry stores finished entries in tuples of 1,024 (its ``_CHUNK``) that
CPython untracks; these tests keep more than a chunk's worth so that pages,
cursors, retention and reused ids all cross chunk boundaries.
"""

from __future__ import annotations

import gc
import weakref
from collections import deque
from typing import Any

import pytest

from bgtasks import TaskHandle, TaskManager, TaskState
from bgtasks._manager.registry import Registry, _Chunks

pytestmark = pytest.mark.anyio

CHUNK = 1024


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Result:
    """A task result that can be watched with a weak reference."""


async def noop() -> None:
    return None


async def fail() -> None:
    raise ValueError("no")


async def run_all(manager: TaskManager, count: int) -> list[str]:
    """Run ``count`` no-op tasks in batches; return their ids, oldest first."""
    ids: list[str] = []
    for at in range(0, count, 500):
        handles = [manager.spawn(noop) for _ in range(min(500, count - at))]
        for handle in handles:
            await handle.wait(timeout=30)
        ids += [handle.id for handle in handles]
    return ids


def registry_of(manager: TaskManager) -> Registry:
    return manager._engine.registry


def followed_references(registry: Registry) -> int:
    """Count the references a full collection follows from the registry's containers.

    Walks what the registry holds as the collector does: each tracked
    container reached counts all its referents, and untracked ones (the
    collector never visits them) count nothing.
    """
    total = 0
    seen: set[int] = set()
    todo: list[Any] = [getattr(registry, name) for name in Registry.__slots__]
    while todo:
        obj = todo.pop()
        if id(obj) in seen or not gc.is_tracked(obj):
            continue
        seen.add(id(obj))
        referents = gc.get_referents(obj)
        total += len(referents)
        todo += [
            r for r in referents if isinstance(r, (list, tuple, dict, deque, _Chunks))
        ]
    return total


def all_ids(manager: TaskManager, *, limit: int) -> list[str]:
    """Every page's ids, following next_cursor until it is None."""
    seen: list[str] = []
    after = None
    while True:
        page = manager.list(limit=limit, after=after)
        seen += [info.id for info in page]
        after = page.next_cursor
        if after is None:
            return seen


async def test_kept_records_cost_the_collector_a_reference_per_chunk() -> None:
    """5,000 kept records: the collector follows a few per chunk, not one each."""
    count = 5000
    async with TaskManager(max_finished=count) as manager:
        await run_all(manager, count)
        gc.collect()
        registry = registry_of(manager)
        assert not gc.is_tracked(registry._positions)  # str -> int
        for queue in (registry._finished, registry._order):
            assert len(queue.frozen) == count // CHUNK
            assert not any(gc.is_tracked(chunk) for chunk in queue.frozen)
        # The two lists being filled (under a chunk each), one reference per
        # chunk, the spare random ids (up to 256) and the registry's slots.
        bound = 2 * (count % CHUNK) + 2 * (count // CHUNK) + 256 + 64
        assert followed_references(registry) < bound < count // 2


async def test_a_finished_result_that_holds_objects_keeps_its_chunk_tracked() -> None:
    """Untracking is CPython's: a chunk with a tracked result stays visited."""
    async with TaskManager(max_finished=2 * CHUNK) as manager:

        async def answer() -> dict[str, list[int]]:
            return {"values": [1, 2]}

        first = await manager.spawn(answer).wait(timeout=5)
        await run_all(manager, CHUNK)
        gc.collect()
        frozen = registry_of(manager)._finished.frozen
        assert [gc.is_tracked(chunk) for chunk in frozen] == [True]
        assert manager.get(first.id) == first


async def test_pages_cross_chunk_boundaries_exactly() -> None:
    """Pages of any size, with cursors inside or at chunk edges, cover all once."""
    count = 3 * CHUNK + 100
    async with TaskManager(max_finished=count) as manager:
        ids = await run_all(manager, count)
        newest_first = ids[::-1]
        assert [info.id for info in manager.list()] == newest_first
        for limit in (7, CHUNK - 1, CHUNK, CHUNK + 1, 2000):
            assert all_ids(manager, limit=limit) == newest_first
        page = manager.list(limit=100)  # a cursor at the top chunk's edge
        assert [info.id for info in manager.list(limit=3, after=page.next_cursor)] == (
            newest_first[100:103]
        )


async def test_the_state_filter_pages_across_chunks() -> None:
    """One failure every 300 tasks: filtered pages skip whole chunks of others."""
    async with TaskManager(max_finished=10_000, log_failures=False) as manager:
        failed: list[str] = []
        for at in range(3000):
            if at % 300 == 0:
                failed.append((await manager.spawn(fail).wait(timeout=5)).id)
            else:
                await manager.spawn(noop).wait(timeout=5)
        pages: list[list[str]] = []
        after = None
        while True:
            page = manager.list(state=TaskState.FAILED, limit=4, after=after)
            pages.append([info.id for info in page])
            after = page.next_cursor
            if after is None:
                break
        assert manager._engine.registry.count(TaskState.FAILED) == 10
        assert manager._engine.registry.count(TaskState.SUCCEEDED) == 2990
    assert pages == [failed[::-1][:4], failed[::-1][4:8], failed[::-1][8:]]


async def test_ttl_pruning_releases_whole_chunks() -> None:
    """Records that expire across a chunk edge go; younger ones stay, in order."""
    clock = FakeClock()
    async with TaskManager(
        max_finished=10_000, finished_ttl=60, clock=clock
    ) as manager:
        old = await run_all(manager, CHUNK + 500)
        clock.now += 30
        young = await run_all(manager, CHUNK)
        registry = registry_of(manager)
        assert len(registry._finished.frozen) == 2
        clock.now += 31  # ``old`` are 61 s old, ``young`` 31 s
        assert [info.id for info in manager.list()] == young[::-1]
        assert manager.get(old[-1]) is None
        assert manager.get(young[0]) is not None
        assert len(registry) == CHUNK
        assert len(registry._finished) == CHUNK
        assert len(registry._finished.frozen) == 1  # the first chunk is released
        assert all_ids(manager, limit=300) == young[::-1]
        clock.now += 30
        assert manager.list() == []
        assert len(registry) == 0


async def test_a_dropped_result_is_freed_before_its_chunk() -> None:
    """Retention frees a dropped task's result even while its chunk is kept."""
    async with TaskManager(max_finished=CHUNK) as manager:
        results: list[weakref.ref[Result]] = []

        async def make() -> Result:
            result = Result()
            results.append(weakref.ref(result))
            return result

        await manager.spawn(make).wait(timeout=5)
        await run_all(manager, CHUNK - 1)
        for _ in range(10):
            await manager.spawn(make).wait(timeout=5)
        manager.list()  # prunes to the limit
        gc.collect()
        # The first record's chunk still holds kept records; its result is gone.
        assert [ref() is None for ref in results] == [True] + [False] * 10
        assert len(registry_of(manager)._finished.frozen) == 1


async def test_a_reused_id_in_an_older_chunk_is_the_new_task_only() -> None:
    """An id finished a chunk ago, then reused: get, pages, handles see the new one."""
    async with TaskManager(log_failures=False) as manager:
        first = manager.spawn_with_id("again", noop)
        await first.wait(timeout=5)
        ids = await run_all(manager, CHUNK + 10)
        before = manager.list(limit=5)
        second = manager.spawn_with_id("again", fail)
        info = await second.wait(timeout=5)
        assert info.state is TaskState.FAILED
        assert manager.get("again") == info
        assert first.info() is None  # its entry is dead in the first chunk
        assert second.info() == info
        listed = [i.id for i in manager.list()]
        assert listed == ["again", *ids[::-1]]
        rest = all_ids_after(manager, before.next_cursor)
        assert "again" not in rest
        assert rest == ids[::-1][5:]
        assert len(manager._engine.registry) == CHUNK + 11


def all_ids_after(manager: TaskManager, after: str | None) -> list[str]:
    seen: list[str] = []
    while after is not None:
        page = manager.list(limit=250, after=after)
        seen += [info.id for info in page]
        after = page.next_cursor
    return seen


async def test_many_reused_ids_across_chunks_rebuild_the_queue() -> None:
    """Reusing 1,500 ids twice over rebuilds the finish queue; each keeps its latest."""
    count = 1500
    async with TaskManager(max_finished=10_000) as manager:
        handles: dict[str, TaskHandle[None]] = {}
        for round_ in range(3):
            for at in range(count):
                task_id = f"t{(at * 7 + round_) % count}"
                handles[task_id] = manager.spawn_with_id(task_id, noop)
            for handle in handles.values():
                await handle.wait(timeout=30)
        registry = registry_of(manager)
        assert len(registry) == count
        # Dead entries are dropped once they outnumber the live ones.
        assert len(registry._finished) <= 2 * count + 64 + 1
        assert len(registry._finished_at) - registry._first_time == len(
            registry._finished
        )
        latest = [f"t{(at * 7 + 2) % count}" for at in range(count)][::-1]
        assert [info.id for info in manager.list()] == latest
        assert all_ids(manager, limit=CHUNK - 1) == latest
        for task_id, handle in handles.items():
            assert manager.get(task_id) == handle.info()
