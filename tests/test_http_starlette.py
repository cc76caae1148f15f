"""The Starlette status/cancel API, tracked BackgroundTasks and the lifespan helper."""

from __future__ import annotations

import importlib
import math
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

import bgtasks.starlette
from bgtasks import TaskHandle, TaskManager, TaskState, current_task
from bgtasks._web.lifespan import manager_from_app
from bgtasks.exceptions import ManagerNotRunningError
from bgtasks.starlette import TrackedBackgroundTasks, lifespan, task_router

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient


Backend = Literal["asyncio", "trio"]


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


STATES = ["pending", "running", "succeeded", "failed", "cancelled", "interrupted"]


class Box:
    """Shared test state: what the tasks saw, and events to coordinate with them."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.release = anyio.Event()
        self.started = anyio.Event()


def fail(reason: str) -> None:
    """A task that always raises, with a secret-looking message."""
    raise ValueError(reason)


def make_app(
    manager: TaskManager, box: Box, *, expose: bool = False, prefix: str = "/tasks"
) -> Starlette:
    """A Starlette app with endpoints that add tracked tasks and the task routes."""

    async def add(request: Request) -> JSONResponse:
        tasks = TrackedBackgroundTasks(manager)
        kind = request.query_params.get("kind", "ok")
        handle: TaskHandle  # each kind returns another type
        if kind == "ok":
            handle = tasks.add_task(compute, 20, factor=2)
        elif kind == "fail":
            handle = tasks.add_task(fail, "password=hunter2")
        elif kind == "nan":
            handle = tasks.add_task(lambda: math.nan)
        elif kind == "surrogate":
            handle = tasks.add_task(undecodable_file_name)
        else:
            handle = tasks.add_task(object)
        # An untracked task after the tracked one: it must still run.
        tasks.background_tasks.add_task(box.ran.append, "next")
        return JSONResponse({"task_id": handle.id}, background=tasks.background_tasks)

    async def spawn_blocked(request: Request) -> JSONResponse:
        handle = manager.spawn(blocked, box)
        await box.started.wait()
        return JSONResponse({"task_id": handle.id})

    def compute(x: int, factor: int = 1) -> int:
        current_task().set_progress(1.0, message="done")
        return x * factor

    return Starlette(
        lifespan=lifespan(manager),
        routes=[
            Route("/add", add, methods=["POST"]),
            Route("/blocked", spawn_blocked, methods=["POST"]),
            Mount(prefix, app=task_router(manager, expose_error_messages=expose)),
        ],
    )


def undecodable_file_name() -> str:
    """A file name as os.listdir() gives it on a non-UTF-8 disk: a lone surrogate."""
    name = b"caf\xe9.png".decode("utf-8", "surrogateescape")
    current_task().set_progress(0.5, message=f"resizing {name}")
    return name


async def blocked(box: Box) -> str:
    """An async task that runs until the box releases it."""
    box.started.set()
    await box.release.wait()
    return "released"


def wait_for(client: TestClient, task_id: str) -> Any:
    """Wait, on the client's event loop, until the task finishes; its TaskInfo."""
    manager = manager_from_app(client.app)
    assert client.portal is not None
    return client.portal.call(lambda: manager.wait(task_id, timeout=5))


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    """A TestClient of the app above, lifespan running, on each backend."""
    manager = TaskManager()
    with TestClient(make_app(manager, Box()), backend=backend) as client:
        yield client


def test_tracked_task_lifecycle_through_http(client: TestClient) -> None:
    """A task added to a response's BackgroundTasks is readable through GET."""
    task_id = client.post("/add").json()["task_id"]
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert task_id == body["id"]
    assert body["state"] == "succeeded"
    assert body["result"] == 40
    assert body["progress"] == 1.0
    assert body["message"] == "done"
    assert body["name"].endswith("compute")
    assert body["error"] is None


def test_failed_task_hides_message_and_next_task_runs(backend: Backend) -> None:
    """A failing task is FAILED with its type only, and the next task still runs."""
    box = Box()
    manager = TaskManager()
    with TestClient(make_app(manager, box), backend=backend) as client:
        task_id = client.post("/add?kind=fail").json()["task_id"]
        response = client.get(f"/tasks/{task_id}")
    assert box.ran == ["next"]
    body = response.json()
    assert body["state"] == "failed"
    assert body["error"] == {"type": "ValueError", "message": None}
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text


def test_error_messages_when_the_app_opts_in(backend: Backend) -> None:
    """With expose_error_messages=True the body carries the exception message."""
    manager = TaskManager()
    app = make_app(manager, Box(), expose=True)
    with TestClient(app, backend=backend) as client:
        task_id = client.post("/add?kind=fail").json()["task_id"]
        body = client.get(f"/tasks/{task_id}").json()
    assert body["error"] == {"type": "ValueError", "message": "password=hunter2"}
    assert "Traceback" not in str(body)


@pytest.mark.parametrize("kind", ["nan", "object"])
def test_result_not_json_is_left_out(client: TestClient, kind: str) -> None:
    """A result that is not strict JSON (NaN, objects) is omitted, never a 500."""
    task_id = client.post(f"/add?kind={kind}").json()["task_id"]
    response = client.get(f"/tasks/{task_id}")
    assert response.status_code == 200
    assert response.json()["state"] == "succeeded"
    assert "result" not in response.json()


def test_lone_surrogates_in_a_task_are_escaped_not_a_500(client: TestClient) -> None:
    """A result or message no UTF-8 encoder takes still gives 200 and valid JSON."""
    task_id = client.post("/add?kind=surrogate").json()["task_id"]
    for url in (f"/tasks/{task_id}", "/tasks/"):
        response = client.get(url)
        assert response.status_code == 200
        assert response.content.isascii()
    body = client.get(f"/tasks/{task_id}").json()
    assert body["result"] == "caf\udce9.png"
    assert body["message"] == "resizing caf\udce9.png"


@pytest.mark.parametrize(
    "task_id",
    [
        "unknown",
        "a" * 128,
        "a" * 129,
        "bad.id",
        "bad%20id",
        "%C3%A9t%C3%A9",
        "a%2Fb",
        "a/b/c",
    ],
)
def test_unknown_and_malformed_ids_are_404(client: TestClient, task_id: str) -> None:
    """Unknown and malformed ids give 404 with a JSON detail, for GET and DELETE."""
    for method in ("GET", "DELETE"):
        response = client.request(method, f"/tasks/{task_id}")
        assert response.status_code == 404
        assert response.json() == {"detail": "task not found"}


def test_list_newest_first_with_filter_and_limit(client: TestClient) -> None:
    """GET / lists newest first, filters by state and pages with has_more."""
    ok = [client.post("/add").json()["task_id"] for _ in range(3)]
    failed = client.post("/add?kind=fail").json()["task_id"]
    body = client.get("/tasks/").json()
    assert [failed, *reversed(ok)] == [t["id"] for t in body["tasks"]]
    assert body["has_more"] is False
    body = client.get("/tasks/?state=succeeded&limit=2").json()
    assert [ok[2], ok[1]] == [t["id"] for t in body["tasks"]]
    assert body["has_more"] is True
    body = client.get("/tasks/", params={"state": "failed"}).json()
    assert [failed] == [t["id"] for t in body["tasks"]]
    assert client.get("/tasks/?state=running").json()["tasks"] == []


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        ("state=done", f"state must be one of: {', '.join(STATES)}"),
        ("state=", f"state must be one of: {', '.join(STATES)}"),
        ("state=%FF", f"state must be one of: {', '.join(STATES)}"),
        ("limit=%FF", "limit must be an integer from 1 to 100"),
        ("limit=0", "limit must be an integer from 1 to 100"),
        ("limit=101", "limit must be an integer from 1 to 100"),
        ("limit=-1", "limit must be an integer from 1 to 100"),
        ("limit=abc", "limit must be an integer from 1 to 100"),
        ("limit=%C2%B2", "limit must be an integer from 1 to 100"),
        ("limit=1e3", "limit must be an integer from 1 to 100"),
        # int() would refuse this with CPython's own message about digits.
        ("limit=" + "9" * 5000, "limit must be an integer from 1 to 100"),
        ("limit=" + "0" * 4999 + "1", "limit must be an integer from 1 to 100"),
    ],
)
def test_bad_query_parameters_are_422(
    client: TestClient, query: str, detail: str
) -> None:
    """A bad state or limit gives 422 with a detail naming the allowed values."""
    response = client.get(f"/tasks/?{query}")
    assert response.status_code == 422
    assert {"detail": detail} == response.json()


def test_list_pages_follow_next_with_the_state_filter(client: TestClient) -> None:
    """next is the cursor of the next page; with state it pages the matches only."""
    ok = [client.post("/add").json()["task_id"] for _ in range(3)]
    failed = client.post("/add?kind=fail").json()["task_id"]
    ok.append(client.post("/add").json()["task_id"])
    pages: list[list[str]] = []
    query: dict[str, str] = {"state": "succeeded", "limit": "2"}
    while True:
        body = client.get("/tasks/", params=query).json()
        pages.append([t["id"] for t in body["tasks"]])
        assert body["has_more"] is (body["next"] is not None)
        if body["next"] is None:
            break
        query["cursor"] = body["next"]
    assert [[ok[3], ok[2]], [ok[1], ok[0]]] == pages
    everything = client.get("/tasks/?limit=4").json()
    rest = client.get("/tasks/", params={"cursor": everything["next"]}).json()
    assert [ok[0]] == [t["id"] for t in rest["tasks"]]
    assert failed in [t["id"] for t in everything["tasks"]]


BAD_CURSOR = "cursor is not valid here: use the next value of an earlier page, or none"


@pytest.mark.parametrize(
    "cursor",
    ["", "nope", "%00", "x" * 5000, "eyJ2IjoxLCJlIjoiQUFBQUFBQUEiLCJzIjoxfQ"],
)
def test_bad_cursor_is_400_in_fixed_words(client: TestClient, cursor: str) -> None:
    """A cursor this server did not give is 400 with a fixed detail, never a 500."""
    client.post("/add")
    response = client.get(f"/tasks/?cursor={cursor}")
    assert response.status_code == 400
    assert response.json() == {"detail": BAD_CURSOR}
    assert response.headers["cache-control"] == "no-store"


def test_unsupported_method_is_405(client: TestClient) -> None:
    """Other methods get a JSON 405 in bgtasks' words, with the Allow header."""
    for method, path, allow in [
        ("PUT", "/tasks/abc", "DELETE, GET, HEAD"),
        ("POST", "/tasks/abc", "DELETE, GET, HEAD"),
        ("DELETE", "/tasks/", "GET, HEAD"),
        ("PATCH", "/tasks/", "GET, HEAD"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 405
        assert response.json() == {"detail": "method not allowed"}
        assert allow == response.headers["allow"]
        assert response.headers["cache-control"] == "no-store"


def test_cancel_running_task_then_conflict(client: TestClient) -> None:
    """DELETE gives 202 for a running task, then 409 once it is cancelled."""
    task_id = client.post("/blocked").json()["task_id"]
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 202
    assert task_id == response.json()["id"]
    assert response.json()["cancel_requested"] is True
    info = wait_for(client, task_id)
    assert info.state == TaskState.CANCELLED
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 409
    assert response.json() == {"detail": "task already finished", "state": "cancelled"}


def test_cancel_finished_task_is_409(client: TestClient) -> None:
    """DELETE of a task that already succeeded is a 409 naming its state."""
    task_id = client.post("/add").json()["task_id"]
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 409
    assert response.json() == {"detail": "task already finished", "state": "succeeded"}


@pytest.mark.anyio
async def test_cancel_tracked_task_while_its_request_runs() -> None:
    """A tracked task can be cancelled through the API by another request."""
    box = Box()
    manager = TaskManager()

    async def start(request: Request) -> JSONResponse:
        tasks = TrackedBackgroundTasks(manager)
        handle = tasks.add_task(blocked, box)
        tasks.background_tasks.add_task(box.ran.append, "next")
        return JSONResponse({"task_id": handle.id}, background=tasks.background_tasks)

    app = Starlette(
        routes=[
            Route("/start", start, methods=["POST"]),
            Mount("/tasks", app=task_router(manager)),
        ]
    )
    transport = httpx.ASGITransport(app=app)
    results: dict[str, httpx.Response] = {}

    async def post_start(client: httpx.AsyncClient) -> None:
        results["start"] = await client.post("/start")

    with anyio.fail_after(5):
        async with (
            manager,
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            anyio.create_task_group() as tg,
        ):
            tg.start_soon(post_start, client)
            await box.started.wait()
            [running] = manager.list(state=TaskState.RUNNING)
            response = await client.delete(f"/tasks/{running.id}")
            assert response.status_code == 202
            info = await manager.wait(running.id, timeout=5)
    assert info.state == TaskState.CANCELLED
    assert running.id == results["start"].json()["task_id"]
    # The request's next background task still ran after the cancelled one.
    assert box.ran == ["next"]


def test_cancel_races_with_finish(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that finishes between lookup and cancel gives 409, or 404 if dropped."""
    task_id = client.post("/blocked").json()["task_id"]
    manager = manager_from_app(client.app)
    finished = client.get(f"/tasks/{task_id}").json()

    async def too_late(self: TaskManager, task_id: str) -> bool:
        return False

    monkeypatch.setattr(TaskManager, "cancel", too_late)
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 409
    assert response.json()["state"] == "running"  # what get() reports now
    calls: list[str] = []
    real_get = TaskManager.get

    def get_then_drop(self: TaskManager, task_id: str) -> Any:
        calls.append(task_id)
        return real_get(self, task_id) if len(calls) == 1 else None

    monkeypatch.setattr(TaskManager, "get", get_then_drop)
    response = client.delete(f"/tasks/{task_id}")
    assert response.status_code == 404
    assert finished["state"] == "running"
    monkeypatch.undo()
    assert client.portal is not None
    client.portal.call(manager.cancel, task_id)


def test_mount_at_any_prefix(backend: Backend) -> None:
    """The router works under any prefix, and url_for knows its routes."""
    manager = TaskManager()
    app = make_app(manager, Box(), prefix="/api/v1/jobs")
    with TestClient(app, backend=backend) as client:
        task_id = client.post("/add").json()["task_id"]
        assert client.get(f"/api/v1/jobs/{task_id}").status_code == 200
        assert client.get("/api/v1/jobs/").status_code == 200
        assert client.get(f"/tasks/{task_id}").status_code == 404


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"manager": object()}, TypeError, "needs the app's bgtasks.TaskManager"),
        ({"max_page_size": 0}, ValueError, "max_page_size must be at least 1"),
        ({"max_page_size": True}, TypeError, "max_page_size must be an int"),
        ({"max_page_size": "10"}, TypeError, "max_page_size must be an int"),
    ],
)
def test_task_router_refuses_bad_arguments(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad arguments fail when the router is built, naming the argument."""
    arguments: dict[str, Any] = {"manager": TaskManager(), **kwargs}
    with pytest.raises(error, match=match):
        task_router(**arguments)


def test_page_size_bounds_the_default_limit(backend: Backend) -> None:
    """Without ?limit= a page holds max_page_size tasks."""
    manager = TaskManager()

    async def add(request: Request) -> JSONResponse:
        tasks = TrackedBackgroundTasks(manager)
        for _ in range(3):
            tasks.add_task(box.ran.append, "x")
        return JSONResponse({}, background=tasks.background_tasks)

    box = Box()
    app = Starlette(
        lifespan=lifespan(manager),
        routes=[
            Route("/add", add, methods=["POST"]),
            Mount("/tasks", app=task_router(manager, max_page_size=2)),
        ],
    )
    with TestClient(app, backend=backend) as client:
        client.post("/add")
        body = client.get("/tasks/").json()
        assert len(body["tasks"]) == 2
        assert body["has_more"] is True
        assert client.get("/tasks/?limit=3").status_code == 422


def test_tracked_background_tasks_shares_the_given_instance() -> None:
    """Tasks go to the BackgroundTasks given, after the ones already there."""
    background = BackgroundTasks()
    background.add_task(print)
    tasks = TrackedBackgroundTasks(TaskManager(), background)
    assert background is tasks.background_tasks
    assert repr(tasks) == "<TrackedBackgroundTasks of 1 tasks>"
    with pytest.raises(TypeError, match="TrackedBackgroundTasks"):
        TrackedBackgroundTasks(object())  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_add_task_outside_a_running_manager_raises() -> None:
    """add_task on a manager that is not running raises ManagerNotRunningError."""
    tasks = TrackedBackgroundTasks(TaskManager())
    with pytest.raises(ManagerNotRunningError):
        tasks.add_task(print)


def test_lifespan_runs_and_publishes_the_manager(backend: Backend) -> None:
    """The manager runs while the app runs, published on app.state."""
    manager = TaskManager()
    app = Starlette(lifespan=lifespan(manager))
    seen = [manager.running]
    with TestClient(app, backend=backend):
        seen.append(manager.running)
        assert manager is manager_from_app(app)
    seen.append(manager.running)
    assert seen == [False, True, False]


def test_manager_from_app_without_lifespan_raises() -> None:
    """Looking up a manager the lifespan never published raises a clear error."""
    with pytest.raises(ManagerNotRunningError, match="lifespan=bgtasks"):
        manager_from_app(Starlette())
    with pytest.raises(ManagerNotRunningError):
        manager_from_app(object())


def test_lifespan_drains_then_cancels(backend: Backend) -> None:
    """At shutdown a task that finishes in time succeeds, a stuck one is cancelled."""
    manager = TaskManager(drain_timeout=0.05)
    box = Box()
    quick_started = anyio.Event()

    async def quick() -> str:
        quick_started.set()
        await anyio.sleep(0.01)
        return "drained"

    async def start(request: Request) -> JSONResponse:
        stuck = manager.spawn(blocked, box)
        handle = manager.spawn(quick)
        await box.started.wait()
        await quick_started.wait()
        return JSONResponse({"stuck": stuck.id, "quick": handle.id})

    app = Starlette(lifespan=lifespan(manager), routes=[Route("/", start)])
    with TestClient(app, backend=backend) as client:
        ids = client.get("/").json()
    stuck, quick_info = manager.get(ids["stuck"]), manager.get(ids["quick"])
    assert stuck is not None
    assert quick_info is not None
    assert stuck.state == TaskState.CANCELLED
    assert quick_info.state == TaskState.SUCCEEDED
    assert quick_info.result == "drained"


def test_lifespan_wraps_the_apps_own_lifespan(backend: Backend) -> None:
    """The app's lifespan is entered first, left last, and its state passes on."""
    manager = TaskManager()
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append(f"app start, manager running={manager.running}")
        yield {"db": "pool"}
        events.append(f"app stop, manager running={manager.running}")

    async def read_state(request: Request) -> JSONResponse:
        return JSONResponse({"db": request.state.db})

    app = Starlette(
        lifespan=lifespan(manager, app_lifespan), routes=[Route("/", read_state)]
    )
    with TestClient(app, backend=backend) as client:
        assert client.get("/").json() == {"db": "pool"}
        assert manager is manager_from_app(app)
    assert events == [
        "app start, manager running=False",
        "app stop, manager running=False",
    ]


def test_lifespan_refuses_bad_arguments() -> None:
    """A non-manager or an un-decorated async generator lifespan is a TypeError."""

    async def generator_lifespan(app: object) -> AsyncIterator[None]:
        yield

    with pytest.raises(TypeError, match="TaskManager"):
        lifespan(object())  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="@asynccontextmanager"):
        lifespan(TaskManager(), generator_lifespan)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="@asynccontextmanager"):
        lifespan(TaskManager(), "not callable")  # type: ignore[call-overload]


def test_lifespan_on_an_app_without_state(backend: Backend) -> None:
    """The lifespan also works for a plain ASGI app object without .state."""
    manager = TaskManager()

    async def enter() -> None:
        async with lifespan(manager)(object()):
            assert manager.running is True

    anyio.run(enter, backend=backend)
    assert manager.running is False


@pytest.mark.parametrize("name", ["bgtasks.starlette", "bgtasks.fastapi"])
def test_public_modules_export_exactly_all(name: str) -> None:
    """The integration modules list a sorted __all__ and nothing else public."""
    module = importlib.import_module(name)
    assert sorted(module.__all__) == module.__all__
    # Assertion rewriting of the pytest11 plugin's package adds "@py_builtins".
    public = {a for a in vars(module) if a.isidentifier() and not a.startswith("_")}
    public.discard("annotations")
    assert set(module.__all__) == public
    assert bgtasks.starlette.lifespan is module.lifespan
