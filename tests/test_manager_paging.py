"""Paging through ``TaskManager.list()``: exact while tasks come and go."""

from __future__ import annotations

import base64

import anyio
import pytest

from bgtasks import TaskList, TaskManager, TaskState

pytestmark = pytest.mark.anyio


async def noop() -> None:
    return None


async def fail() -> None:
    raise ValueError("no")


def all_pages(
    manager: TaskManager, *, limit: int, state: TaskState | None = None
) -> list[list[str]]:
    """Every page's ids, following next_cursor until it is None."""
    pages: list[list[str]] = []
    after = None
    while True:
        page = manager.list(state=state, limit=limit, after=after)
        pages.append([info.id for info in page])
        after = page.next_cursor
        if after is None:
            return pages


async def test_pages_cover_every_task_newest_first() -> None:
    """Pages of 3 split the list in order; the last page has no cursor."""
    async with TaskManager() as manager:
        ids = [(await manager.spawn(noop).wait(timeout=5)).id for _ in range(8)]
        pages = all_pages(manager, limit=3)
        whole = manager.list()
    newest_first = list(reversed(ids))
    assert [newest_first[:3], newest_first[3:6], newest_first[6:]] == pages
    assert isinstance(whole, TaskList)
    assert whole.next_cursor is None
    assert newest_first == [info.id for info in whole]


async def test_an_exact_last_page_has_no_cursor() -> None:
    """When the tasks fill the page exactly, next_cursor is None: no empty page."""
    async with TaskManager() as manager:
        for _ in range(4):
            await manager.spawn(noop).wait(timeout=5)
        assert [len(page) for page in all_pages(manager, limit=2)] == [2, 2]


async def test_paging_composes_with_the_state_filter() -> None:
    """A state filter pages over the matching tasks only."""
    async with TaskManager() as manager:
        failed = []
        for i in range(9):
            if i % 3 == 0:
                failed.append((await manager.spawn(fail).wait(timeout=5)).id)
            else:
                await manager.spawn(noop).wait(timeout=5)
        pages = all_pages(manager, state=TaskState.FAILED, limit=2)
    assert [failed[::-1][:2], failed[::-1][2:]] == pages


async def test_paging_is_exact_while_tasks_come_and_go() -> None:
    """Between pages, new and pruned tasks cause no repeat and hide no stored one."""
    gate = anyio.Event()
    async with TaskManager(max_finished=20) as manager:
        running = {manager.spawn(gate.wait).id for _ in range(3)}
        for _ in range(20):
            await manager.spawn(noop).wait(timeout=5)
        initial = [info.id for info in manager.list()]
        seen: list[str] = []
        after = None
        while True:
            page = manager.list(limit=4, after=after)
            seen += [info.id for info in page]
            after = page.next_cursor
            if after is None:
                break
            # 3 new tasks finish: the 3 oldest finished ones are pruned.
            for _ in range(3):
                await manager.spawn(noop).wait(timeout=5)
        stored = {info.id for info in manager.list()}
        gate.set()
    assert len(set(seen)) == len(seen)
    assert [i for i in initial if i in set(seen)] == seen  # newest first
    assert {i for i in initial if i in stored} <= set(seen)
    assert running <= set(seen)
    assert len(seen) < len(initial)  # some were pruned before their page


async def test_a_cursor_survives_rebuilding_the_paging_order() -> None:
    """After hundreds of tasks are pruned between two pages, paging resumes exactly."""
    gate = anyio.Event()
    async with TaskManager(max_finished=10) as manager:
        running = [manager.spawn(gate.wait).id for _ in range(5)]
        for _ in range(10):
            await manager.spawn(noop).wait(timeout=5)
        first = manager.list(limit=3)
        for _ in range(300):  # prunes every finished task older than the page
            await manager.spawn(noop).wait(timeout=5)
        assert len(manager._engine.registry._order) < 300  # the order was rebuilt
        rest = manager.list(after=first.next_cursor)
        gate.set()
    assert running[::-1] == [info.id for info in rest]


async def test_a_reused_id_moves_to_the_top_and_is_not_listed_twice() -> None:
    """Resubmitting a finished task's id puts it first; later pages skip it."""
    async with TaskManager() as manager:
        await manager.spawn_with_id("again", noop).wait(timeout=5)
        for _ in range(3):
            await manager.spawn(noop).wait(timeout=5)
        page = manager.list(limit=2)
        await manager.spawn_with_id("again", noop).wait(timeout=5)
        rest = manager.list(after=page.next_cursor)
        assert [info.id for info in rest if info.id == "again"] == []
        assert manager.list(limit=1)[0].id == "again"


async def test_dropped_records_leave_the_paging_order() -> None:
    """Thousands of pruned records do not pile up in the paging order."""
    async with TaskManager(max_finished=10) as manager:
        for _ in range(2000):
            await manager.spawn(noop).wait(timeout=5)
        registry = manager._engine.registry
        manager.list()
        assert len(registry._order) <= 10 + 10 // 8 + 64 + 1
        assert len(registry._order) == len(registry._seqs)
        assert len(manager.list()) == 10


def _cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    "after",
    [
        "",
        "not a cursor",
        "@@@",
        "a" * 201,
        "a",  # not base64
        _cursor_of("[1]"),
        _cursor_of('{"v":1,"e":"x","s":1}'),  # another manager's epoch
        _cursor_of('{"v":1,"e":"x","s":1}') + "=",
    ],
)
async def test_bad_cursors_are_refused(after: str) -> None:
    """Anything but a cursor this manager made is a ValueError naming after."""
    async with TaskManager() as manager:
        await manager.spawn(noop).wait(timeout=5)
        with pytest.raises(ValueError, match=r"^after must be the next_cursor"):
            manager.list(after=after)


async def test_cursors_are_exact_texts_of_this_manager() -> None:
    """A valid cursor's epoch, sequence and form are checked, not only its shape."""
    async with TaskManager() as manager, TaskManager() as other:
        for _ in range(3):
            await manager.spawn(noop).wait(timeout=5)
            await other.spawn(noop).wait(timeout=5)
        cursor = manager.list(limit=1).next_cursor
        assert cursor is not None
        assert len(manager.list(after=cursor)) == 2
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        for text in (raw.replace(":", ": "), raw.replace('"s":', '"s":-')):
            with pytest.raises(ValueError, match="after"):
                manager.list(after=_cursor_of(text))
        with pytest.raises(ValueError, match="after"):
            other.list(after=cursor)
