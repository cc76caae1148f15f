"""How an ``add_task`` task runs in the request's task: context, order, its entry."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from starlette.background import BackgroundTask, BackgroundTasks

from bgtasks import TaskManager, TaskState, current_task
from bgtasks._manager.background import TrackedTask, unsent

pytestmark = pytest.mark.anyio

user: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="-")


async def test_the_task_runs_in_the_context_of_add_task() -> None:
    """It sees the values of add_task time; its own changes stay inside it."""
    seen: list[str] = []

    async def task() -> None:
        seen.append(f"{user.get()} {current_task().id == handle.id}")
        user.set("changed by the task")

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        user.set("ada")
        handle = manager.add_task(tasks, task)
        user.set("set after add_task")
        tasks.add_task(lambda: seen.append(user.get()))
        await tasks()
    assert seen == ["ada True", "set after add_task"]


async def test_added_from_a_worker_thread_the_task_sees_that_thread() -> None:
    """From a sync endpoint's thread: that thread's values, and anyio works."""
    seen: list[str] = []

    async def task() -> None:
        await anyio.sleep(0)  # the async library is known in the captured context
        seen.append(user.get())

    async with TaskManager() as manager:
        tasks = BackgroundTasks()

        def endpoint() -> None:
            user.set("grace")
            manager.add_task(tasks, task)

        await anyio.to_thread.run_sync(endpoint)
        await tasks()
    assert seen == ["grace"]


async def test_tracked_and_plain_tasks_run_in_the_order_added() -> None:
    """Async and sync, tracked and plain: Starlette's order, one after the other."""
    ran: list[str] = []

    async def tracked_async() -> None:
        await anyio.sleep(0)
        ran.append("tracked async")

    def tracked_sync() -> None:
        ran.append("tracked sync")

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        tasks.add_task(ran.append, "plain 1")
        first = manager.add_task(tasks, tracked_async)
        tasks.add_task(ran.append, "plain 2")
        second = manager.add_task(tasks, tracked_sync)
        await tasks()
        states = [manager.get(h.id).state for h in (first, second)]  # type: ignore[union-attr]
    assert ran == ["plain 1", "tracked async", "plain 2", "tracked sync"]
    assert states == [TaskState.SUCCEEDED, TaskState.SUCCEEDED]


async def test_the_entry_is_a_background_task_named_after_the_function() -> None:
    """Starlette sees a BackgroundTask; awaiting it runs the task, tracked."""

    async def send(to: str) -> str:
        return f"sent to {to}"

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send, "ada")
        [entry] = tasks.tasks
        assert isinstance(entry, BackgroundTask)
        assert (entry.func, entry.args, entry.kwargs, entry.is_async) == (
            send,
            (),
            {},
            True,
        )
        await entry()
        info = await handle.wait(timeout=5)
    assert (info.state, info.result) == (TaskState.SUCCEEDED, "sent to ada")


class AuditedTasks(BackgroundTasks):
    """A BackgroundTasks whose own add_task must see every task."""

    def __init__(self) -> None:
        super().__init__()
        self.audit: list[object] = []

    def add_task(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.audit.append(func)
        super().add_task(func, *args, **kwargs)


async def test_a_subclass_with_its_own_add_task_sees_the_task() -> None:
    """Such a subclass's add_task is called; the task still runs tracked."""
    ran: list[str] = []

    async def task() -> None:
        ran.append(current_task().name)

    async with TaskManager() as manager:
        tasks = AuditedTasks()
        handle = manager.add_task(tasks, task)
        assert [type(func) for func in tasks.audit] == [TrackedTask]
        assert [record.id for record in unsent(tasks)] == [handle.id]
        await tasks()
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED
    assert ran == [info.name]


async def test_a_cancelled_request_cancels_its_running_task() -> None:
    """The request's task cancelled mid-task: CANCELLED, and the cancel goes on."""
    started = anyio.Event()
    after: list[str] = []

    async def task() -> None:
        started.set()
        await anyio.sleep_forever()

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, task)
        tasks.add_task(after.append, "never")
        request = anyio.CancelScope()

        async def serve() -> None:
            with request:
                await tasks()

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            await started.wait()
            request.cancel()
        info = await handle.wait(timeout=5)
    assert request.cancelled_caught
    assert (info.state, info.cancel_requested) == (TaskState.CANCELLED, False)
    assert after == []


async def test_a_cancelled_task_may_shield_its_cleanup() -> None:
    """cancel() reaches the task, whose shielded cleanup still runs to its end."""
    started = anyio.Event()
    cleaned: list[str] = []

    async def task() -> None:
        try:
            started.set()
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0)
                cleaned.append("done")

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, task)
        tasks.add_task(cleaned.append, "next task")
        async with anyio.create_task_group() as tg:
            tg.start_soon(tasks)
            await started.wait()
            assert await handle.cancel()
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.CANCELLED
    assert cleaned == ["done", "next task"]
