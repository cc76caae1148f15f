"""Checked by mypy and pyright, never run: the TaskManager API as users call it.

Submissions are checked against the function (``ParamSpec``) and keep its
return type: ``TaskHandle[T]``, ``TaskInfo[T]``, ``result: T | None``. Each
``type: ignore`` must be needed (mypy's warn_unused_ignores, and pyright's
setting below).
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from typing import Any

from starlette.background import BackgroundTasks
from typing_extensions import assert_type

from bgtasks import TaskHandle, TaskInfo, TaskManager, TaskState, current_task
from bgtasks._manager.current import TaskContext
from bgtasks._manager.events import TaskEvent
from bgtasks._manager.records import TaskError


async def report(user_id: int) -> dict[str, int]:
    task = assert_type(current_task(), TaskContext)
    task.set_progress(0.5, message="half")
    assert_type(task.id, str)
    assert_type(task.cancel_requested, bool)
    return {"user_id": user_id}


def thumbnail(name: str) -> str:
    return name


def resize(name: str, *, width: int = 100) -> bytes:
    return name.encode() * width


class Mailer:
    async def send(self, to: str) -> bool:
        return bool(to)


async def use(manager: TaskManager, tasks: BackgroundTasks) -> None:
    async with manager as entered:
        assert_type(entered, TaskManager)
        handle = assert_type(manager.spawn(report, 7), TaskHandle[dict[str, int]])
        assert_type(manager.spawn(thumbnail, "a.png"), TaskHandle[str])
        assert_type(manager.spawn(resize, "a", width=3), TaskHandle[bytes])
        assert_type(manager.spawn(Mailer().send, "ada"), TaskHandle[bool])
        manager.spawn(functools.partial(report, 7))  # partials: checkers differ
        assert_type(manager.spawn_with_id("thumb-1", thumbnail, "a"), TaskHandle[str])
        assert_type(manager.add_task(tasks, thumbnail, "b.png"), TaskHandle[str])
        assert_type(
            manager.add_task_with_id(tasks, "r-1", report, 1),
            TaskHandle[dict[str, int]],
        )
        manager.spawn(report, "7")  # type: ignore[call-overload]
        manager.spawn(report)  # type: ignore[call-overload]
        manager.spawn(report, 7, 8)  # type: ignore[call-overload]
        manager.spawn(resize, "a", height=3)  # type: ignore[arg-type, call-arg]
        manager.spawn(thumbnail, "a", _task_id="x")  # type: ignore[arg-type, call-arg]
        manager.spawn_with_id(7, thumbnail, "a")  # type: ignore[call-overload]
        manager.spawn_with_id("t-1", thumbnail, 3)  # type: ignore[call-overload]
        manager.add_task(tasks, thumbnail, b"b")  # type: ignore[call-overload]
        manager.add_task(thumbnail, "b")  # type: ignore[call-overload]
        manager.add_task_with_id(tasks, "t-2", report)  # type: ignore[call-overload]
        assert_type(handle.id, str)
        assert_type(handle.info(), TaskInfo[dict[str, int]] | None)
        info = assert_type(await handle.wait(timeout=5), TaskInfo[dict[str, int]])
        assert_type(info.result, dict[str, int] | None)
        assert_type(manager.spawn(thumbnail, "a").info(), TaskInfo[str] | None)
        assert_type(await handle.cancel(), bool)
        assert_type(manager.get(handle.id), TaskInfo | None)
        assert_type(manager.get(handle.id), TaskInfo[Any] | None)
        assert_type(manager.list(state=TaskState.RUNNING, limit=10)[0], TaskInfo)
        assert_type(await manager.cancel(handle.id), bool)
        assert_type(await manager.wait(handle.id, timeout=1.5), TaskInfo)
        assert_type(manager.running, bool)
        assert_type(info.state, TaskState)
        assert_type(info.state.is_finished, bool)
        assert_type(info.created_at, datetime)
        assert_type(info.finished_at, datetime | None)
        assert_type(info.error, TaskError | None)
        assert_type(info.progress, float | None)
        assert_type(info.to_dict(include_error_message=False), dict[str, Any])

        def on_event(event: TaskEvent) -> None:
            assert_type(event.new_state, TaskState)

        async def on_event_async(event: TaskEvent) -> None:
            assert_type(event.old_state, TaskState | None)

        unsubscribe = assert_type(manager.subscribe(on_event), Callable[[], None])
        manager.subscribe(on_event_async)
        unsubscribe()
    await manager.aclose(timeout=0)
