"""A finished task: a tuple the collector skips; snapshots decoded on read."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle
from datetime import datetime, timezone

import anyio
import pytest

from bgtasks import TaskInfo, TaskManager, TaskState, current_task

pytestmark = pytest.mark.anyio


async def answer() -> int:
    current_task().set_progress(0.5, message="half")
    return 42


async def fail() -> None:
    raise ValueError("boom")


async def test_a_kept_finished_task_costs_the_collector_nothing() -> None:
    """A finished task with a plain result is stored untracked by the collector."""
    async with TaskManager(max_finished=10) as manager:
        handles = [manager.spawn(answer), manager.spawn(fail)]
        for handle in handles:
            await handle.wait(timeout=5)
        gc.collect()
        stored = [manager._engine.registry.get(h.id) for h in handles]
        assert [gc.is_tracked(entry) for entry in stored] == [False, False]


async def test_a_snapshot_equals_one_built_from_its_fields() -> None:
    """A manager's snapshot reads, compares, copies and pickles as a plain TaskInfo."""
    async with TaskManager(log_failures=False) as manager:
        for func in (answer, fail):
            info = await manager.spawn(func).wait(timeout=5)
            plain = TaskInfo(
                **{f.name: getattr(info, f.name) for f in dataclasses.fields(info)}
            )
            stored = [manager.get(info.id) for _ in range(6)]
            assert None not in stored
            read = [s for s in stored if s is not None]  # each one not yet decoded
            assert plain == info == read[0]
            assert hash(plain) == hash(read[1])
            assert repr(plain) == repr(read[2])
            assert plain.to_dict() == read[3].to_dict()
            assert plain == pickle.loads(pickle.dumps(read[4]))
            assert plain == copy.copy(read[5])
            assert plain == dataclasses.replace(manager.get(info.id) or plain)
    assert isinstance(info.created_at, datetime)
    assert info.created_at.tzinfo is timezone.utc
    assert info.finished_at is not None
    assert info.started_at is not None
    assert info.created_at <= info.started_at <= info.finished_at
    assert (
        info.state,
        info.error and info.error.type,
        info.error and info.error.message,
    ) == (TaskState.FAILED, "ValueError", "boom")


async def test_a_decoded_snapshot_has_the_task_values() -> None:
    """Result, progress and attempt survive the finished record's encoding."""
    async with TaskManager() as manager:
        info = await manager.spawn(answer).wait(timeout=5)
        stored = manager.get(info.id)
    assert stored is not None
    assert (
        stored.state,
        stored.result,
        stored.error,
        stored.progress,
        stored.message,
        stored.attempt,
        stored.cancel_requested,
        stored.cancel_reason,
        stored.next_attempt_at,
    ) == (TaskState.SUCCEEDED, 42, None, 0.5, "half", 1, False, None, None)


async def test_a_snapshot_stays_frozen_and_knows_its_fields() -> None:
    """Setting a field fails; a name that is no field is an AttributeError."""
    async with TaskManager() as manager:
        info = await manager.spawn(answer).wait(timeout=5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.result = 1  # type: ignore[misc]
    with pytest.raises(AttributeError, match="no attribute 'reslut'"):
        getattr(info, "reslut")  # noqa: B009 - the name is the point


async def test_waiting_on_a_finished_task_returns_its_final_snapshot() -> None:
    """Every wait() after the end returns the one final snapshot object."""
    async with TaskManager() as manager:
        handle = manager.spawn(answer)
        first = await handle.wait(timeout=5)
        again = await handle.wait(timeout=5)
        info = handle.info()
        by_id = await manager.wait(handle.id)
    assert first is again is info
    assert by_id == first


async def test_a_running_task_snapshot_is_not_kept() -> None:
    """Snapshots of an active task are taken afresh: progress shows at once."""
    started = anyio.Event()
    release = anyio.Event()

    async def slow() -> None:
        current_task().set_progress(0.25)
        started.set()
        await release.wait()

    async with TaskManager() as manager:
        handle = manager.spawn(slow)
        await started.wait()
        first = handle.info()
        assert first is not None
        assert (first.state, first.progress) == (TaskState.RUNNING, 0.25)
        release.set()
        final = await handle.wait(timeout=5)
    assert final is not first
    assert final.state == TaskState.SUCCEEDED
