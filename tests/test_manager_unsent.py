"""Tracked tasks whose response never goes out end CANCELLED, "response not sent"."""

# No `from __future__ import annotations`: FastAPI must resolve closures' annotations.

import contextlib
import functools
import gc
import tracemalloc
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import pytest
from fastapi import BackgroundTasks, FastAPI, HTTPException
from starlette.applications import Starlette
from starlette.background import BackgroundTasks as StarletteBackgroundTasks
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bgtasks import TaskEvent, TaskInfo, TaskManager, TaskState
from bgtasks.fastapi import TrackedTasks, lifespan
from bgtasks.starlette import TrackedBackgroundTasks

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

Backend = Literal["asyncio", "trio"]
ran: list[str] = []


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


@pytest.fixture(autouse=True)
def _clear_ran() -> None:
    ran.clear()


async def send(email: str) -> None:
    """The task: must never run when the response is not sent."""
    ran.append(email)


def unsent(info: TaskInfo | None) -> tuple[Any, ...]:
    """What a tracked task whose response never went out must look like."""
    assert info is not None
    return (info.state, info.cancel_reason, info.to_dict()["cancel_reason"])


NOT_SENT = (TaskState.CANCELLED, "response not sent", "response not sent")


def settled(client: TestClient, manager: TaskManager, task_id: str) -> TaskInfo:
    """Wait, on the app's loop, until the task is finished (a finalizer may be due)."""
    assert client.portal is not None
    return client.portal.call(functools.partial(manager.wait, task_id, timeout=5))


def fastapi_app(manager: TaskManager, ids: list[str]) -> FastAPI:
    """Endpoints that add tracked tasks, then fail or answer without them."""
    app = FastAPI(lifespan=lifespan(manager))

    @app.post("/http-error")
    async def http_error(tasks: TrackedTasks) -> None:
        ids.append(tasks.add_task(send, "a").id)
        raise HTTPException(status_code=409, detail="taken")

    @app.post("/crash")
    def crash(tasks: TrackedTasks) -> None:  # sync: runs in a worker thread
        ids.append(tasks.add_task(send, "b").id)
        raise RuntimeError("bug")

    @app.post("/own-response")
    async def own_response(background_tasks: BackgroundTasks) -> Response:
        ids.append(manager.add_task(background_tasks, send, "c").id)
        # A response with its own background: FastAPI drops the request's.
        return JSONResponse({}, background=StarletteBackgroundTasks())

    return app


@pytest.mark.parametrize("path", ["/http-error", "/crash", "/own-response"])
def test_fastapi_request_without_response_cancels(backend: Backend, path: str) -> None:
    """A FastAPI endpoint that raises or drops its tasks: "response not sent"."""
    manager = TaskManager()
    ids: list[str] = []
    app = fastapi_app(manager, ids)
    with TestClient(app, backend=backend, raise_server_exceptions=False) as client:
        assert client.post(path).status_code in {200, 409, 500}
        # The request is over: no shutdown, no garbage collection needed.
        assert unsent(settled(client, manager, ids[0])) == NOT_SENT
    assert ran == []


def starlette_app(manager: TaskManager, ids: list[str]) -> Starlette:
    """Plain Starlette endpoints that add tracked tasks and fail or drop them."""

    @asynccontextmanager
    async def run(app: Starlette) -> AsyncIterator[None]:
        async with manager:
            yield

    async def http_error(request: Request) -> Response:
        tasks = TrackedBackgroundTasks(manager)
        ids.append(tasks.add_task(send, "a").id)
        raise StarletteHTTPException(status_code=409)

    def crash(request: Request) -> Response:  # sync: runs in a worker thread
        tasks = TrackedBackgroundTasks(manager)
        ids.append(tasks.add_task(send, "b").id)
        raise RuntimeError("bug")

    async def crash_async(request: Request) -> Response:
        tasks = TrackedBackgroundTasks(manager)
        ids.append(tasks.add_task(send, "b").id)
        raise RuntimeError("bug")

    async def answer(request: Request) -> Response:
        tasks = TrackedBackgroundTasks(manager)
        ids.append(tasks.add_task(send, "d").id)
        return JSONResponse({}, background=tasks.background_tasks)

    async def forgot_background(request: Request) -> Response:
        tasks = StarletteBackgroundTasks()
        ids.append(manager.add_task(tasks, send, "c").id)
        return JSONResponse({})  # no background=tasks: they never run

    return Starlette(
        lifespan=run,
        routes=[
            Route("/http-error", http_error, methods=["POST"]),
            Route("/crash", crash, methods=["POST"]),
            Route("/crash-async", crash_async, methods=["POST"]),
            Route("/forgot", forgot_background, methods=["POST"]),
            Route("/answer", answer, methods=["POST"]),
        ],
    )


@pytest.mark.parametrize("path", ["/http-error", "/forgot"])
def test_starlette_request_without_response_cancels(
    backend: Backend, path: str
) -> None:
    """A Starlette endpoint that raises or drops its tasks: "response not sent"."""
    manager = TaskManager()
    ids: list[str] = []
    app = starlette_app(manager, ids)
    with TestClient(app, backend=backend, raise_server_exceptions=False) as client:
        assert client.post(path).status_code in {200, 409, 500}
        assert unsent(settled(client, manager, ids[0])) == NOT_SENT
    assert ran == []


async def serve_once(app: Starlette, path: str, *, client_gone: bool) -> None:
    """Make one request as a server would (TestClient's portal keeps errors alive)."""
    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": path}
    scope |= {"headers": [], "query_string": b"", "root_path": ""}

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: object) -> None:
        if client_gone:
            raise OSError("client disconnected")

    with contextlib.suppress(Exception):  # a server logs it and drops it
        await app(scope, receive, send)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("path", "client_gone"),
    [("/crash-async", False), ("/answer", True)],
)
async def test_starlette_crash_or_client_gone(path: str, client_gone: bool) -> None:
    """An endpoint's unhandled error, or a client gone: the task is cancelled."""
    manager = TaskManager()
    ids: list[str] = []
    app = starlette_app(manager, ids)
    async with manager:
        await serve_once(app, path, client_gone=client_gone)
        # The loop ends the record soon; no shutdown, no garbage collection.
        assert unsent(await manager.wait(ids[0], timeout=5)) == NOT_SENT
    assert ran == []


@pytest.mark.anyio
async def test_starlette_sync_crash_ends_at_collection() -> None:
    """A sync endpoint's error outlives the request a little: then its task ends."""
    manager = TaskManager()
    ids: list[str] = []
    app = starlette_app(manager, ids)
    async with manager:
        await serve_once(app, "/crash", client_gone=False)
        # The idle worker thread keeps its last error until its next job; under
        # load another idle thread may take a job first, so give a few jobs.
        for _ in range(10):
            await anyio.to_thread.run_sync(gc.collect)
            found = manager.get(ids[0])
            if found is not None and found.state.is_finished:
                break
        assert unsent(await manager.wait(ids[0], timeout=5)) == NOT_SENT
    assert ran == []


@pytest.mark.anyio
async def test_subscribers_see_the_cancellation() -> None:
    """Sync and async subscribers both get the unsent task's CANCELLED event."""
    seen: list[tuple[str, TaskState]] = []

    async def on_async(event: TaskEvent) -> None:
        seen.append(("async", event.new_state))

    async with TaskManager() as manager:
        manager.subscribe(lambda event: seen.append(("sync", event.new_state)))
        manager.subscribe(on_async)
        handle = manager.add_task(StarletteBackgroundTasks(), send, "x")
        await handle.wait(timeout=5)
        for _ in range(10):  # the async delivery runs in the manager's group
            await anyio.lowlevel.checkpoint()
    assert seen == [
        ("sync", TaskState.PENDING),
        ("sync", TaskState.CANCELLED),
        ("async", TaskState.PENDING),
        ("async", TaskState.CANCELLED),
    ]


@pytest.mark.anyio
async def test_shutdown_does_not_wait_for_tasks_held_in_a_cycle() -> None:
    """A dropped BackgroundTasks kept alive by a cycle does not hold up the drain."""
    manager = TaskManager(drain_timeout=600)
    with anyio.fail_after(5):  # would wait the 600 s drain before
        async with manager:
            gc.disable()  # so that only shutdown collects the cycle
            try:
                tasks = StarletteBackgroundTasks()
                handle = manager.add_task(tasks, send, "cycle")
                tasks.cycle = tasks  # type: ignore[attr-defined]
                del tasks
            finally:
                gc.enable()
            assert manager.get(handle.id) is not None
    assert unsent(handle.info()) == NOT_SENT
    assert ran == []


# 1,100 requests: under coverage on a busy machine this outlasts the 30 s default.
@pytest.mark.timeout(120)
def test_many_unsent_requests_stay_bounded(backend: Backend) -> None:
    """Many failed requests: nothing stays PENDING, retention holds, memory flat."""
    manager = TaskManager(max_finished=64)
    ids: list[str] = []
    app = fastapi_app(manager, ids)

    def fail_requests(count: int) -> int:
        for _ in range(count):
            client.post("/http-error")
        ids.clear()
        gc.collect()
        return tracemalloc.get_traced_memory()[0]

    with TestClient(app, backend=backend, raise_server_exceptions=False) as client:
        tracemalloc.start()
        try:
            fail_requests(200)  # warm up: caches and the retention window fill
            before = fail_requests(300)
            grown = fail_requests(600) - before
        finally:
            tracemalloc.stop()
        assert manager.list(state=TaskState.PENDING) == []
        assert len(manager.list()) <= 64
        assert manager.list(limit=1)[0].cancel_reason == "response not sent"
    assert grown < 60_000  # PENDING forever: about 400 B a request, 240 kB here
    assert ran == []
