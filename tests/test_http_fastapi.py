"""The FastAPI router (OpenAPI, auth dependencies) and the tracked-tasks dependency."""

# No `from __future__ import annotations`: FastAPI must resolve closures' annotations.

import importlib
import re
import sys
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Header, HTTPException
from pydantic import BaseModel

from bgtasks import TaskManager, TaskState
from bgtasks._manager.registry import TASK_ID_PATTERN
from bgtasks.exceptions import ManagerNotRunningError
from bgtasks.fastapi import (
    TrackedBackgroundTasks,
    TrackedTasks,
    lifespan,
    task_router,
    task_tag,
    tracked_tasks,
)

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


Backend = Literal["asyncio", "trio"]


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


def double(x: int) -> int:
    """A sync task: runs in the thread pool."""
    return 2 * x


async def explode() -> None:
    """An async task that fails with a message that must stay private."""
    raise KeyError("customer 42")


def require_token(x_token: Annotated[str, Header()] = "") -> None:
    """A user's auth dependency: the routes are only for token holders."""
    if x_token != "secret":
        raise HTTPException(status_code=401, detail="bad token")


def make_app(manager: TaskManager, ran: list[str], **router_options: Any) -> FastAPI:
    """A FastAPI app whose endpoints add tracked tasks in dependencies and bodies."""
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(task_router(manager, **router_options))

    def audit(background_tasks: BackgroundTasks, who: str = "anonymous") -> str:
        background_tasks.add_task(ran.append, f"audit {who}")
        return who

    def tracked_audit(tasks: TrackedTasks, who: str = "anonymous") -> str:
        tasks.add_task(ran.append, f"tracked audit {who}")
        return who

    @app.post("/double/{x}", status_code=202)
    async def create(
        x: int,
        tasks: TrackedTasks,
        who: Annotated[str, Depends(audit)],
        again: Annotated[str, Depends(tracked_audit)],
    ) -> dict[str, str]:
        handle = tasks.add_task(double, x)
        tasks.add_task(ran.append, "after")
        return {"task_id": handle.id}

    @app.post("/explode", status_code=202)
    def create_failing(tasks: TrackedTasks) -> dict[str, str]:
        # A sync endpoint: FastAPI calls it in a worker thread.
        handle = tasks.add_task(explode)
        tasks.background_tasks.add_task(ran.append, "next")
        return {"task_id": handle.id}

    return app


@pytest.fixture
def ran() -> list[str]:
    """What the untracked tasks recorded, in order."""
    return []


@pytest.fixture
def client(backend: Backend, ran: list[str]) -> Iterator[TestClient]:
    """A TestClient of the app above, lifespan running, on each backend."""
    app = make_app(TaskManager(), ran)
    with TestClient(app, backend=backend) as client:
        yield client


def test_dependency_tasks_merge_in_order(client: TestClient, ran: list[str]) -> None:
    """Tasks from dependencies and the endpoint share one BackgroundTasks, in order."""
    response = client.post("/double/21?who=ann")
    assert response.status_code == 202
    assert ran == ["audit ann", "tracked audit ann", "after"]
    body = client.get(f"/tasks/{response.json()['task_id']}").json()
    assert body["state"] == "succeeded"
    assert body["result"] == 42
    assert body["name"] == "double"


def test_failure_isolated_and_hidden(client: TestClient, ran: list[str]) -> None:
    """A failing tracked task is FAILED, type only, and the next task still runs."""
    task_id = client.post("/explode").json()["task_id"]
    assert ran == ["next"]
    response = client.get(f"/tasks/{task_id}")
    assert response.json()["error"] == {"type": "KeyError", "message": None}
    assert "customer" not in response.text


def test_error_message_when_exposed(backend: Backend) -> None:
    """expose_error_messages=True puts str(exc) in the body, never a traceback."""
    app = make_app(TaskManager(), [], expose_error_messages=True)
    with TestClient(app, backend=backend) as client:
        task_id = client.post("/explode").json()["task_id"]
        response = client.get(f"/tasks/{task_id}")
    assert response.json()["error"] == {"type": "KeyError", "message": "'customer 42'"}
    assert "Traceback" not in response.text


def test_status_codes(client: TestClient) -> None:
    """List, 404 for unknown and malformed ids, 409 for finished, 422 for bad query."""
    task_id = client.post("/double/1").json()["task_id"]
    listing = client.get("/tasks")
    assert listing.status_code == 200
    # Newest first: "after", then double, then the dependency's tracked audit.
    names = [t["name"] for t in listing.json()["tasks"]]
    assert names == ["list.append", "double", "list.append"]
    assert task_id == listing.json()["tasks"][1]["id"]
    assert listing.json()["has_more"] is False
    assert listing.headers["cache-control"] == "no-store"
    only = client.get("/tasks", params={"state": "failed", "limit": 1}).json()
    assert only["tasks"] == []
    for bad in ("nope", "x" * 129, "bad.id"):
        assert client.get(f"/tasks/{bad}").json() == {"detail": "task not found"}
        assert client.delete(f"/tasks/{bad}").status_code == 404
    conflict = client.delete(f"/tasks/{task_id}")
    assert conflict.status_code == 409
    assert conflict.json() == {"detail": "task already finished", "state": "succeeded"}
    for query in ("state=done", "limit=0", "limit=101", "limit=x"):
        assert client.get(f"/tasks?{query}").status_code == 422


@pytest.mark.parametrize(
    ("query", "detail"),
    [
        (
            "state=done",
            "state must be one of: " + ", ".join(s.value for s in TaskState),
        ),
        (
            "state=%3Cscript%3E",
            "state must be one of: " + ", ".join(s.value for s in TaskState),
        ),
        ("limit=0", "limit must be an integer from 1 to 100"),
        ("limit=secret-token", "limit must be an integer from 1 to 100"),
        ("limit=" + "9" * 5000, "limit must be an integer from 1 to 100"),
    ],
)
def test_bad_query_gets_bgtasks_wording_not_pydantics(
    client: TestClient, query: str, detail: str
) -> None:
    """The router validates its own query: a fixed detail, no echo of the input."""
    response = client.get(f"/tasks?{query}")
    assert response.status_code == 422
    assert {"detail": detail} == response.json()
    assert response.headers["cache-control"] == "no-store"


def test_list_pages_with_cursor_and_bad_cursor(client: TestClient) -> None:
    """The FastAPI router pages with next/cursor and answers 400 to a bad cursor."""
    client.post("/double/1")  # three tracked tasks
    first = client.get("/tasks?limit=2").json()
    assert first["has_more"] is True
    second = client.get("/tasks", params={"limit": 2, "cursor": first["next"]}).json()
    assert second["next"] is None
    ids = [t["id"] for t in first["tasks"] + second["tasks"]]
    assert [t["id"] for t in client.get("/tasks").json()["tasks"]] == ids
    response = client.get("/tasks?cursor=<script>")
    assert response.status_code == 400
    assert "script" not in response.text
    assert response.json()["detail"].startswith("cursor is not valid here")


def test_other_errors_carry_no_request_text(client: TestClient) -> None:
    """404s and the app's 405 carry fixed text only, never the path given."""
    for method in ("GET", "DELETE"):
        response = client.request(method, "/tasks/%3Cscript%3E")
        assert response.json() == {"detail": "task not found"}
    response = client.put("/tasks/secret-id")
    assert response.status_code == 405
    assert "secret" not in response.text


def test_openapi_lists_the_task_routes(client: TestClient) -> None:
    """The routes appear in OpenAPI with their models and error responses."""
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert {"get"} == set(paths["/tasks"])
    assert {"get", "delete"} == set(paths["/tasks/{task_id}"])
    delete = paths["/tasks/{task_id}"]["delete"]
    assert {"202", "404", "409", "503"} == set(delete["responses"])
    assert delete["tags"] == ["tasks"]
    ok = delete["responses"]["202"]["content"]["application/json"]["schema"]
    assert ok["$ref"] == "#/components/schemas/BgtasksTaskInfo"
    listing = paths["/tasks"]["get"]
    limit = next(p for p in listing["parameters"] if p["name"] == "limit")
    assert limit["schema"]["maximum"] == 100
    state = next(p for p in listing["parameters"] if p["name"] == "state")
    assert [s.value for s in TaskState] == state["schema"]["enum"]


class TaskInfo(BaseModel):
    """An app's own model named like bgtasks' concept."""

    title: str


class ErrorDetail(BaseModel):
    """Another name an app may well use."""

    reason: str


def openapi_of(**app_options: Any) -> dict[str, Any]:
    """The schema of an app with its own TaskInfo route and the task router."""
    manager = TaskManager()
    app = FastAPI(**app_options)

    @app.get("/mine", responses={418: {"model": ErrorDetail}})
    def mine(state: TaskState) -> TaskInfo:
        return TaskInfo(title=state.value)

    app.include_router(task_router(manager))
    return app.openapi()


def test_openapi_schema_of_the_router() -> None:
    """OpenAPI: no 422 where none can come, task_id's pattern, ids, header, names."""
    schema = openapi_of(openapi_tags=[task_tag()])
    operations = {
        (path, method): operation
        for path, item in schema["paths"].items()
        for method, operation in item.items()
        if path.startswith("/tasks")
    }
    assert {key: op["operationId"] for key, op in operations.items()} == {
        ("/tasks", "get"): "bgtasks_list_tasks",
        ("/tasks/{task_id}", "get"): "bgtasks_get_task",
        ("/tasks/{task_id}", "delete"): "bgtasks_cancel_task",
    }
    # Only the list validates input, and it answers in bgtasks' own model.
    assert {"200", "400", "422", "503"} == set(operations["/tasks", "get"]["responses"])
    bad = operations["/tasks", "get"]["responses"]["422"]["content"]
    assert bad["application/json"]["schema"] == {
        "$ref": "#/components/schemas/BgtasksErrorDetail"
    }
    assert {"200", "404", "503"} == set(
        operations["/tasks/{task_id}", "get"]["responses"]
    )
    for operation in operations.values():
        for answer in operation["responses"].values():
            assert answer["headers"]["Cache-Control"]["schema"]["enum"] == ["no-store"]
    for key in [("/tasks/{task_id}", "get"), ("/tasks/{task_id}", "delete")]:
        (task_id,) = operations[key]["parameters"]
        assert (task_id["name"], task_id["in"]) == ("task_id", "path")
        pattern = task_id["schema"]["pattern"]
        assert f"^{TASK_ID_PATTERN.pattern}$" == pattern
        assert re.search(pattern, "a" * 128)
        assert not re.search(pattern, "ok/../" + "a" * 129)
    assert schema["tags"] == [{"name": "tasks", "description": TAG_TEXT}]


TAG_TEXT = (
    "Status, progress and cancellation of the app's background tasks "
    "(bgtasks). Every answer has `Cache-Control: no-store`."
)


def test_openapi_component_names_do_not_clash_with_the_apps() -> None:
    """The router's components are Bgtasks*, beside an app's own TaskInfo models."""
    components = openapi_of()["components"]["schemas"]
    ours = {name for name in components if name.startswith("Bgtasks")}
    assert {
        "BgtasksCancelConflict",
        "BgtasksErrorDetail",
        "BgtasksTaskError",
        "BgtasksTaskInfo",
        "BgtasksTaskList",
    } == ours
    assert {"properties": {"title"}} == {
        "properties": set(components["TaskInfo"]["properties"])
    }
    assert {"reason"} == set(components["ErrorDetail"]["properties"])
    # The state enum is inline in bgtasks' models, so the app's TaskState is its own.
    assert "TaskState" in components
    assert "$ref" not in components["BgtasksTaskInfo"]["properties"]["state"]
    for name in ours:
        assert name == components[name]["title"]


def test_dependencies_protect_the_routes(backend: Backend) -> None:
    """dependencies=[...] run before every route: the user's auth applies."""
    manager = TaskManager()
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(
        task_router(
            manager, prefix="/admin/tasks", dependencies=[Depends(require_token)]
        )
    )
    with TestClient(app, backend=backend) as client:
        assert client.get("/admin/tasks").status_code == 401
        assert client.delete("/admin/tasks/abc").status_code == 401
        assert (
            client.get("/admin/tasks", headers={"x-token": "secret"}).status_code == 200
        )
        schema = client.get("/openapi.json").json()
    assert "/admin/tasks/{task_id}" in schema["paths"]


def test_router_without_prefix(backend: Backend) -> None:
    """prefix="" puts the list at "/" and include_router(prefix=) nests it."""
    manager = TaskManager()
    app = FastAPI(lifespan=lifespan(manager))
    app.include_router(task_router(manager, prefix=""), prefix="/jobs")
    with TestClient(app, backend=backend) as client:
        assert client.get("/jobs/").json() == {
            "tasks": [],
            "has_more": False,
            "next": None,
        }


def test_explicit_manager_in_the_apps_own_lifespan(backend: Backend) -> None:
    """tracked_tasks(manager) works with the manager entered in the user's lifespan."""
    manager = TaskManager()
    Tasks = Annotated[TrackedBackgroundTasks, Depends(tracked_tasks(manager))]

    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with manager:
            yield

    app = FastAPI(lifespan=own_lifespan)

    @app.post("/")
    async def create(tasks: Tasks) -> dict[str, str]:
        return {"task_id": tasks.add_task(double, 4).id}

    with TestClient(app, backend=backend) as client:
        task_id = client.post("/").json()["task_id"]
    info = manager.get(task_id)
    assert info is not None
    assert info.result == 8
    with TestClient(app, backend=backend) as client:
        pass
    # Without the lifespan running, add_task refuses: the request fails loudly.
    with pytest.raises(ManagerNotRunningError):
        TestClient(app, backend=backend).post("/")
    with pytest.raises(TypeError, match="tracked_tasks"):
        tracked_tasks(object())  # type: ignore[arg-type]


def test_tracked_tasks_without_lifespan_says_how_to_fix(
    backend: Backend,
) -> None:
    """TrackedTasks in an app without bgtasks' lifespan raises a clear error."""
    app = FastAPI()

    @app.post("/")
    async def create(tasks: TrackedTasks) -> None:
        raise AssertionError("not reached")

    with (
        TestClient(app, backend=backend) as client,
        pytest.raises(ManagerNotRunningError, match="lifespan=bgtasks"),
    ):
        client.post("/")


def test_import_without_fastapi_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Importing bgtasks.fastapi without FastAPI tells how to install it."""
    monkeypatch.setitem(sys.modules, "fastapi", None)
    monkeypatch.delitem(sys.modules, "bgtasks.fastapi")
    monkeypatch.delitem(sys.modules, "bgtasks._web.fastapi")
    with pytest.raises(ImportError, match=r"pip install \"bgtasks\[fastapi\]\""):
        importlib.import_module("bgtasks.fastapi")
    monkeypatch.undo()
    assert "TrackedTasks" in importlib.import_module("bgtasks.fastapi").__all__


def test_other_missing_modules_are_not_blamed_on_fastapi(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing dependency other than FastAPI keeps its own error."""
    monkeypatch.setitem(sys.modules, "pydantic", None)
    monkeypatch.delitem(sys.modules, "bgtasks.fastapi")
    monkeypatch.delitem(sys.modules, "bgtasks._web.fastapi")
    with pytest.raises(ModuleNotFoundError) as caught:
        importlib.import_module("bgtasks.fastapi")
    assert caught.value.name == "pydantic"
