"""``TaskManager.add_task``: tracked tasks on the request's own BackgroundTasks."""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Literal

import anyio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from bgtasks import TaskManager, TaskState, current_task
from bgtasks.exceptions import ManagerNotRunningError

Backend = Literal["asyncio", "trio"]
BACKENDS: list[Backend] = ["asyncio", "trio"]
user_var: contextvars.ContextVar[str] = contextvars.ContextVar("user", default="-")
ran: list[str] = []


async def send_welcome(email: str) -> str:
    current_task().set_progress(1.0, message="sent")
    ran.append(f"welcome:{email}")
    return f"sent to {email}"


def make_thumbnail(name: str) -> str:
    ran.append(f"thumb:{name}:{user_var.get()}")
    return current_task().name


async def flaky() -> None:
    raise ConnectionError("smtp down")


def plain_cleanup() -> None:
    ran.append("cleanup")


def build_app(manager: TaskManager) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with manager:
            yield

    async def register(request: Request) -> JSONResponse:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send_welcome, "ada@example.com")
        info = manager.get(handle.id)
        assert info is not None
        return JSONResponse(
            {"id": handle.id, "state": info.state.value}, background=tasks
        )

    def upload(request: Request) -> JSONResponse:  # sync: runs in a worker thread
        user_var.set("grace")
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, make_thumbnail, "cat.png")
        return JSONResponse({"id": handle.id}, background=tasks)

    async def failing(request: Request) -> JSONResponse:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, flaky)
        tasks.add_task(plain_cleanup)
        return JSONResponse({"id": handle.id}, background=tasks)

    async def status(request: Request) -> JSONResponse:
        info = manager.get(request.path_params["task_id"])
        return JSONResponse(None if info is None else info.to_dict())

    return Starlette(
        lifespan=lifespan,
        routes=[
            Route("/register", register, methods=["POST"]),
            Route("/upload", upload, methods=["POST"]),
            Route("/failing", failing, methods=["POST"]),
            Route("/tasks/{task_id}", status),
        ],
    )


@pytest.fixture(autouse=True)
def _clear_ran() -> Iterator[None]:
    ran.clear()
    yield
    ran.clear()


@pytest.mark.parametrize("backend", BACKENDS)
def test_tracked_task_through_http(backend: Backend) -> None:
    """PENDING in the response, SUCCEEDED with result and progress afterwards."""
    manager = TaskManager()
    with TestClient(build_app(manager), backend=backend) as client:
        created = client.post("/register").json()
        assert created["state"] == "pending"
        body = client.get(f"/tasks/{created['id']}").json()
    assert (body["state"], body["result"]) == ("succeeded", "sent to ada@example.com")
    assert (body["progress"], body["message"]) == (1.0, "sent")
    assert ran == ["welcome:ada@example.com"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_sync_endpoint_and_sync_task(backend: Backend) -> None:
    """From a sync endpoint's thread, a sync task runs with that thread's context."""
    manager = TaskManager()
    with TestClient(build_app(manager), backend=backend) as client:
        task_id = client.post("/upload").json()["id"]
        body = client.get(f"/tasks/{task_id}").json()
    assert (body["state"], body["result"]) == ("succeeded", "make_thumbnail")
    assert ran == ["thumb:cat.png:grace"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_failure_is_isolated(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    """A failing tracked task is recorded and logged; the next task still runs."""
    manager = TaskManager()
    with (
        caplog.at_level(logging.ERROR, logger="bgtasks"),
        TestClient(build_app(manager), backend=backend) as client,
    ):
        task_id = client.post("/failing").json()["id"]
        body = client.get(f"/tasks/{task_id}").json()
    assert body["state"] == "failed"
    assert body["error"] == {"type": "ConnectionError", "message": "smtp down"}
    assert ran == ["cleanup"]
    assert any("flaky" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("backend", BACKENDS)
def test_propagate_errors_restores_starlette_behaviour(backend: Backend) -> None:
    """With ``propagate_errors=True`` the error is re-raised after being recorded."""
    manager = TaskManager(propagate_errors=True, log_failures=False)
    with TestClient(build_app(manager), backend=backend) as client:
        with pytest.raises(ConnectionError, match="smtp down"):
            client.post("/failing")
        [info] = manager.list()
    assert info.state == TaskState.FAILED
    assert ran == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_task_never_run_ends_cancelled_at_close(backend: Backend) -> None:
    """A tracked task whose BackgroundTasks never ran is CANCELLED on shutdown."""
    manager = TaskManager(drain_timeout=0)
    with TestClient(build_app(manager), backend=backend):
        orphan = manager.add_task(BackgroundTasks(), send_welcome, "x")
    info = orphan.info()
    assert info is not None
    assert (info.state, info.cancel_requested) == (TaskState.CANCELLED, True)


def test_wrapper_carries_the_function_name() -> None:
    """The wrapper handed to Starlette is async and named like the user's function."""
    manager = TaskManager()
    manager._engine.accepting = True  # registration only: no task group needed
    tasks = BackgroundTasks()
    manager.add_task(tasks, make_thumbnail, "a")
    [task] = tasks.tasks
    assert task.is_async
    assert ("make_thumbnail", "make_thumbnail", __name__) == (
        task.func.__name__,
        task.func.__qualname__,
        task.func.__module__,
    )


def test_add_task_checks_its_arguments() -> None:
    """The BackgroundTasks comes first; bad ids and a stopped manager are refused."""
    manager = TaskManager()
    with pytest.raises(TypeError, match="BackgroundTasks first"):
        manager.add_task(send_welcome, BackgroundTasks())  # type: ignore[call-overload]
    with pytest.raises(ManagerNotRunningError):
        manager.add_task(BackgroundTasks(), send_welcome, "x")
    with pytest.raises(ValueError, match="_task_id must be"):
        manager.add_task_with_id(BackgroundTasks(), "a b", send_welcome, "x")


@pytest.mark.anyio
async def test_cancel_a_running_tracked_task(task_handles: bool) -> None:
    """A tracked task running in the request's task is cancelled promptly."""
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, forever)
        tasks.add_task(plain_cleanup)
        async with anyio.create_task_group() as tg:
            tg.start_soon(tasks)
            await started.wait()
            assert await manager.cancel(handle.id)
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.CANCELLED
    assert ran == ["cleanup"]


@pytest.mark.anyio
async def test_cancelled_pending_tracked_task_never_runs() -> None:
    """Cancelled before Starlette runs it, a tracked task is skipped."""
    async with TaskManager() as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send_welcome, "x")
        assert await handle.cancel()
        await tasks()
    info = handle.info()
    assert info is not None
    assert info.state == TaskState.CANCELLED
    assert ran == []


@pytest.mark.anyio
async def test_shutdown_cancels_running_tracked_tasks() -> None:
    """Closing the manager cancels tracked tasks running in request tasks."""
    manager = TaskManager(drain_timeout=0)
    tasks = BackgroundTasks()
    async with anyio.create_task_group() as tg, manager:
        handle = manager.add_task(tasks, anyio.sleep_forever)
        tg.start_soon(tasks)
        await anyio.sleep(0.01)
    info = handle.info()
    assert info is not None
    assert info.state == TaskState.CANCELLED


@pytest.mark.anyio
async def test_tracked_tasks_share_the_concurrency_limit() -> None:
    """``add_task`` tasks wait for a slot in FIFO order with spawned ones."""
    gate = anyio.Event()
    order: list[str] = []

    async def job(name: str) -> None:
        order.append(name)
        await gate.wait()

    async with TaskManager(max_concurrency=1) as manager:
        first = manager.spawn(job, "spawned")
        requests = [BackgroundTasks() for _ in range(3)]
        handles = [manager.add_task(t, job, f"req{n}") for n, t in enumerate(requests)]
        async with anyio.create_task_group() as tg:
            for tasks in requests:
                tg.start_soon(tasks)
            await anyio.sleep(0.01)
            assert order == ["spawned"]
            await handles[1].cancel()  # queued, then cancelled: never runs
            gate.set()
        await first.wait(timeout=5)
    # Requests queue in the order they reach their background tasks.
    assert (order[0], sorted(order[1:])) == ("spawned", ["req0", "req2"])
    info = handles[1].info()
    assert info is not None
    assert info.state == TaskState.CANCELLED


@pytest.mark.anyio
async def test_tracked_task_with_a_free_slot_runs_at_once() -> None:
    """Under the limit, a tracked task takes a slot and gives it back."""
    async with TaskManager(max_concurrency=2) as manager:
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send_welcome, "x")
        await tasks()
        info = await handle.wait(timeout=5)
        assert manager._engine.slots is not None
        assert manager._engine.slots.held == 0
    assert info.state == TaskState.SUCCEEDED


@pytest.mark.anyio
async def test_shutdown_waits_for_a_cooperative_sync_tracked_task() -> None:
    """Closing waits for a sync tracked task in a request until it stops."""
    import threading

    import anyio.from_thread
    import anyio.to_thread

    started = threading.Event()

    def job() -> None:
        started.set()
        while True:
            anyio.from_thread.check_cancelled()
            threading.Event().wait(0.001)

    manager = TaskManager(drain_timeout=0)
    tasks = BackgroundTasks()
    async with anyio.create_task_group() as tg:
        async with manager:
            handle = manager.add_task(tasks, job)
            tg.start_soon(tasks)
            await anyio.to_thread.run_sync(started.wait, 5)
        info = handle.info()
        assert info is not None
        assert info.state == TaskState.CANCELLED


@pytest.mark.anyio
async def test_request_cancelled_while_waiting_for_a_slot() -> None:
    """If the request's task dies while queued, the tracked task ends CANCELLED."""
    gate = anyio.Event()
    async with TaskManager(max_concurrency=1) as manager:
        manager.spawn(gate.wait)
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send_welcome, "x")
        with anyio.move_on_after(0.02):
            await tasks()
        info = handle.info()
        assert info is not None
        assert info.state == TaskState.CANCELLED
        gate.set()
    assert ran == []


@pytest.mark.anyio
async def test_slot_granted_then_cancelled_is_released() -> None:
    """A queued tracked task granted a slot but cancelled first gives it back."""
    gate = anyio.Event()
    async with TaskManager(max_concurrency=1) as manager:
        blocker = manager.spawn(gate.wait)
        tasks = BackgroundTasks()
        handle = manager.add_task(tasks, send_welcome, "x")
        async with anyio.create_task_group() as tg:
            tg.start_soon(tasks)
            await anyio.sleep(0.01)
            gate.set()
            await blocker.wait(timeout=5)  # the slot went to the queued task...
            await handle.cancel()  # ...which is cancelled before it resumes
        after = await manager.spawn(send_welcome, "y").wait(timeout=5)
    assert after.state == TaskState.SUCCEEDED
    assert ran == ["welcome:y"]
