"""Subscribers hear of every state change; a failing one never breaks a task."""

from __future__ import annotations

import logging

import anyio
import pytest

from bgtasks import TaskManager, TaskState
from bgtasks._manager.events import TaskEvent

pytestmark = pytest.mark.anyio

P, R, S, F, C = (
    TaskState.PENDING,
    TaskState.RUNNING,
    TaskState.SUCCEEDED,
    TaskState.FAILED,
    TaskState.CANCELLED,
)


async def ok() -> str:
    return "ok"


async def bad() -> None:
    raise ValueError("nope")


def transitions(events: list[TaskEvent], task_id: str) -> list[tuple[object, object]]:
    return [(e.old_state, e.new_state) for e in events if e.task_id == task_id]


async def test_sync_subscriber_sees_every_transition() -> None:
    """A sync subscriber is told of creation, start and end, with snapshots."""
    events: list[TaskEvent] = []
    async with TaskManager(log_failures=False) as manager:
        manager.subscribe(events.append)
        good = await manager.spawn(ok).wait(timeout=5)
        failed = await manager.spawn(bad).wait(timeout=5)
    assert transitions(events, good.id) == [(None, P), (P, R), (R, S)]
    assert transitions(events, failed.id) == [(None, P), (P, R), (R, F)]
    last = [e for e in events if e.task_id == good.id][-1]
    assert (last.info.result, last.info.state) == ("ok", S)


async def test_async_subscriber_sees_events_in_order() -> None:
    """An async subscriber gets each task's events in order, creation first."""
    events: list[TaskEvent] = []

    async def record(event: TaskEvent) -> None:
        await anyio.sleep(0)
        events.append(event)

    async with TaskManager() as manager:
        manager.subscribe(record)
        info = await manager.spawn(ok).wait(timeout=5)
        await anyio.sleep(0.01)
    assert transitions(events, info.id) == [(None, P), (P, R), (R, S)]


async def test_pending_cancel_and_shutdown_are_announced() -> None:
    """Cancelling a pending task and shutdown cancellations reach subscribers."""
    sync_events: list[TaskEvent] = []
    async_events: list[TaskEvent] = []

    async def record(event: TaskEvent) -> None:
        async_events.append(event)

    gate = anyio.Event()
    started = anyio.Event()

    async def block() -> None:
        started.set()
        await gate.wait()

    manager = TaskManager(max_concurrency=1, drain_timeout=0)
    async with manager:
        manager.subscribe(sync_events.append)
        manager.subscribe(record)
        blocker = manager.spawn(block)
        queued = manager.spawn(ok)
        left = manager.spawn(ok)
        await started.wait()  # the blocker runs: the other two stay pending
        await queued.cancel()
    for events in (sync_events, async_events):
        assert transitions(events, queued.id) == [(None, P), (P, C)]
        assert transitions(events, left.id) == [(None, P), (P, C)]
        assert transitions(events, blocker.id) == [(None, P), (P, R), (R, C)]


async def test_failing_subscribers_are_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Subscribers that raise are logged; the task and other subscribers go on."""
    seen: list[TaskEvent] = []

    def broken(event: TaskEvent) -> None:
        raise RuntimeError("sync subscriber bug")

    async def broken_async(event: TaskEvent) -> None:
        raise RuntimeError("async subscriber bug")

    async with TaskManager() as manager:
        manager.subscribe(broken)
        manager.subscribe(broken_async)
        manager.subscribe(seen.append)
        with caplog.at_level(logging.ERROR, logger="bgtasks"):
            info = await manager.spawn(ok).wait(timeout=5)
    assert (info.state, info.result) == (S, "ok")
    assert len(transitions(seen, info.id)) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert any("broken " in m and "failed" in m for m in messages)
    assert any("broken_async" in m for m in messages)


async def test_unsubscribe_stops_events() -> None:
    """The function ``subscribe`` returns removes the subscriber, once."""
    events: list[TaskEvent] = []

    async def quiet(event: TaskEvent) -> None:
        events.append(event)  # pragma: no cover - unsubscribed first

    async with TaskManager() as manager:
        keep = manager.subscribe(print)
        unsubscribe = manager.subscribe(events.append)
        unsubscribe_async = manager.subscribe(quiet)
        unsubscribe()  # not the first one registered
        unsubscribe()
        keep()
        unsubscribe_async()
        await manager.spawn(ok).wait(timeout=5)
    assert events == []


async def test_sync_only_subscriber_hears_pending_cancel() -> None:
    """Without async subscribers, a pending cancel is still announced."""
    events: list[TaskEvent] = []
    gate = anyio.Event()
    async with TaskManager(max_concurrency=1) as manager:
        manager.subscribe(events.append)
        manager.spawn(gate.wait)
        queued = manager.spawn(ok)
        await queued.cancel()
        gate.set()
    assert transitions(events, queued.id) == [(None, P), (P, C)]


async def test_subscriber_must_be_callable() -> None:
    """Subscribing a non-callable raises TypeError."""
    manager = TaskManager()
    with pytest.raises(TypeError, match="callable"):
        manager.subscribe("print")  # type: ignore[arg-type]
