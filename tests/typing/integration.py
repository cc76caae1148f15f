"""Checked by mypy and pyright, never run: the Starlette/FastAPI glue's types."""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.routing import Mount, Router
from typing_extensions import assert_type

from bgtasks import TaskHandle, TaskInfo, TaskList, TaskManager
from bgtasks.fastapi import TrackedTasks, task_router, task_tag, tracked_tasks
from bgtasks.starlette import TrackedBackgroundTasks, lifespan
from bgtasks.starlette import task_router as starlette_task_router

manager = TaskManager()

assert_type(starlette_task_router(manager), Router)
assert_type(task_router(manager, dependencies=[Depends(print)]), APIRouter)
assert_type(lifespan(manager), Callable[[object], AbstractAsyncContextManager[None]])

starlette_app = Starlette(
    lifespan=lifespan(manager),
    routes=[Mount("/tasks", app=starlette_task_router(manager))],
)
fastapi_app = FastAPI(lifespan=lifespan(manager))
assert_type(task_tag(), dict[str, str])
FastAPI(openapi_tags=[task_tag("jobs")])


@asynccontextmanager
async def own_lifespan(app: FastAPI) -> AsyncGenerator[dict[str, int], None]:
    yield {"answer": 42}


assert_type(
    lifespan(manager, own_lifespan),
    Callable[[FastAPI], AbstractAsyncContextManager[dict[str, int]]],
)
FastAPI(lifespan=lifespan(manager, own_lifespan))

dependency = tracked_tasks(manager)
assert_type(
    dependency,
    Callable[[Request, BackgroundTasks], AsyncIterator[TrackedBackgroundTasks]],
)
Tasks = Annotated[TrackedBackgroundTasks, Depends(dependency)]


def send(email: str, *, subject: str = "") -> None: ...


def endpoint(tasks: TrackedTasks, other: Tasks) -> str:
    handle = tasks.add_task(send, "ada@example.com", subject="hi")
    assert_type(handle, TaskHandle[None])
    assert_type(other.add_task_with_id("report-1", send, "x"), TaskHandle[None])
    tasks.add_task(send, 3)  # type: ignore[call-overload]
    tasks.add_task(send, "x", subjet="hi")  # type: ignore[arg-type, call-arg]
    other.add_task_with_id("report-2", send)  # type: ignore[call-overload]
    assert_type(tasks.background_tasks, StarletteBackgroundTasks)
    return handle.id


def every_task_id(manager: TaskManager) -> list[str]:
    page = assert_type(manager.list(limit=50), TaskList)
    ids = [info.id for info in page]
    while page.next_cursor is not None:
        assert_type(page.next_cursor, str)
        page = manager.list(limit=50, after=page.next_cursor)
        assert_type(page[0], TaskInfo)
        ids += [info.id for info in page]
    return ids
