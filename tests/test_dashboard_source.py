"""The dashboard's data adapter: pages, filters, cursors and statistics."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, cast

import pytest

from bgtasks import TaskInfo, TaskManager, TaskState
from bgtasks._manager.records import TaskError
from bgtasks._web.dashboard.source import Page, TaskSource

EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


def info(
    number: int,
    state: TaskState = TaskState.SUCCEEDED,
    *,
    name: str = "job",
    ran: float | None = 1.0,
) -> TaskInfo:
    """A snapshot submitted ``number`` seconds after EPOCH that ran ``ran`` s."""
    created = EPOCH + timedelta(seconds=number)
    started = None if ran is None else created
    finished = (
        None
        if ran is None or not state.is_finished
        else created + timedelta(seconds=ran)
    )
    return TaskInfo(
        id=f"t{number:04d}",
        name=name,
        state=state,
        created_at=created,
        started_at=started,
        finished_at=finished,
        result=None,
        error=TaskError("ValueError", "secret") if state is TaskState.FAILED else None,
        progress=None,
        message=None,
        attempt=1,
        cancel_requested=False,
    )


class FakeManager:
    """The part of TaskManager the adapter uses, over a fixed list of snapshots."""

    def __init__(self, infos: list[TaskInfo]) -> None:
        self.infos = sorted(infos, key=lambda i: i.created_at, reverse=True)
        self.scans = 0
        self.running = True

    def list(
        self, *, state: TaskState | None = None, limit: int | None = None
    ) -> list[TaskInfo]:
        self.scans += 1
        found = [i for i in self.infos if state is None or i.state is state]
        return found if limit is None else found[:limit]

    def get(self, task_id: str) -> TaskInfo | None:
        return next((i for i in self.infos if i.id == task_id), None)

    async def aget(self, task_id: str) -> TaskInfo | None:
        return self.get(task_id)

    async def alist(
        self, *, state: TaskState | None = None, limit: int | None = None
    ) -> Any:  # what list() returns
        return self.list(state=state, limit=limit)


def source_of(
    infos: list[TaskInfo], clock: Any = None
) -> tuple[TaskSource, FakeManager]:
    """A TaskSource over a FakeManager holding ``infos``."""
    fake = FakeManager(infos)
    manager = cast("TaskManager", fake)
    if clock is None:
        return TaskSource(manager), fake
    return TaskSource(manager, clock=clock), fake


def ids(page: Page) -> list[str]:
    """The ids on a page, in order."""
    return [i.id for i in page.tasks]


@pytest.mark.anyio
async def test_page_is_newest_first_with_a_cursor_to_older_ones() -> None:
    """Paging walks the whole history once, newest first, then stops."""
    source, _ = source_of([info(n) for n in range(7)])
    first = await source.page(limit=3)
    assert ids(first) == ["t0006", "t0005", "t0004"]
    assert first.next_cursor is not None
    second = await source.page(limit=3, cursor=first.next_cursor)
    assert ids(second) == ["t0003", "t0002", "t0001"]
    assert second.next_cursor is not None
    third = await source.page(limit=3, cursor=second.next_cursor)
    assert ids(third) == ["t0000"]
    assert third.next_cursor is None


@pytest.mark.anyio
async def test_cursor_survives_its_task_being_dropped() -> None:
    """If retention dropped the cursor's task, paging resumes at older ones."""
    source, fake = source_of([info(n) for n in range(6)])
    cursor = (await source.page(limit=3)).next_cursor
    assert cursor is not None
    fake.infos = [i for i in fake.infos if i.id != "t0003"]  # the page's last one
    assert ids(await source.page(limit=3, cursor=cursor)) == ["t0002", "t0001", "t0000"]


@pytest.mark.anyio
async def test_cursor_older_than_everything_gives_an_empty_page() -> None:
    """A cursor from before the oldest retained task ends the paging."""
    source, _ = source_of([info(n) for n in range(3)])
    page = await source.page(limit=3, cursor="0~gone")
    assert (page.tasks, page.next_cursor) == ([], None)


@pytest.mark.anyio
async def test_filters_by_state_name_and_id_prefix() -> None:
    """State, name (case-insensitive substring) and id prefix all narrow the page."""
    infos = [
        info(1, name="send_email"),
        info(2, TaskState.FAILED, name="send_email"),
        info(3, name="Resize.Image"),
        info(14, name="resize_video"),
    ]
    source, _ = source_of(infos)
    assert ids(await source.page(state=TaskState.FAILED)) == ["t0002"]
    assert ids(await source.page(name="RESIZE")) == ["t0014", "t0003"]
    assert ids(await source.page(id_prefix="t001")) == ["t0014"]
    assert ids(await source.page(id_prefix="t0001")) == ["t0001"]  # a whole id: no scan
    assert ids(await source.page(id_prefix="t0001", state=TaskState.FAILED)) == []
    assert ids(await source.page(name="email", state=TaskState.SUCCEEDED)) == ["t0001"]


@pytest.mark.anyio
async def test_unfiltered_first_page_does_not_scan_everything() -> None:
    """The common request asks the manager for limit + 1 tasks, not the history."""
    calls: list[int | None] = []
    source, fake = source_of([info(n) for n in range(100)])
    real = fake.list

    def spy(*, state: TaskState | None = None, limit: int | None = None) -> Any:
        calls.append(limit)
        return real(state=state, limit=limit)

    fake.list = spy  # type: ignore[method-assign]
    page = await source.page(limit=10)
    assert calls == [11]
    assert len(page.tasks) == 10


def test_stats_count_every_state_and_time_the_runs() -> None:
    """Counts cover every state, zeros too; the rate skips cancels; p50/p95 by rank."""
    infos = [info(n, ran=float(n)) for n in range(1, 21)]  # 1 s .. 20 s
    infos += [info(30, TaskState.FAILED, ran=0.5), info(31, TaskState.CANCELLED)]
    infos += [info(32, TaskState.RUNNING), info(33, TaskState.PENDING, ran=None)]
    source, _ = source_of(infos)
    stats = source.stats()
    assert stats.counts == {
        TaskState.PENDING: 1,
        TaskState.RUNNING: 1,
        TaskState.SUCCEEDED: 20,
        TaskState.FAILED: 1,
        TaskState.CANCELLED: 1,
        TaskState.INTERRUPTED: 0,
    }
    assert list(stats.counts) == list(TaskState)
    assert stats.success_rate == pytest.approx(20 / 21)
    durations = sorted([*map(float, range(1, 21)), 0.5, 1.0])
    assert stats.duration_p50 == durations[10]  # rank ceil(0.5 * 22) = 11
    assert stats.duration_p95 == durations[20]  # rank ceil(0.95 * 22) = 21


def test_stats_without_history_are_empty() -> None:
    """No finished task: no rate and no durations, rather than made-up zeros."""
    source, _ = source_of([info(1, TaskState.RUNNING)])
    stats = source.stats()
    assert stats.success_rate is None
    assert stats.duration_p50 is None
    assert stats.duration_p95 is None


def test_stats_are_shared_for_a_moment() -> None:
    """Pages asking within STATS_TTL share one scan of the history."""
    now = [0.0]
    source, fake = source_of([info(1)], clock=lambda: now[0])
    first = source.stats()
    assert source.stats() is first
    assert fake.scans == 1
    now[0] += 1.5
    assert source.stats() is not first
    assert fake.scans == 2
