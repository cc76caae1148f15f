"""FastAPI's background-tasks tutorial, with bgtasks decorators and the manager.

The apps are the tutorial's (tutorial001: ``write_notification``; tutorial002:
``write_log`` added from a dependency and from the endpoint), and the checks are
those of FastAPI's own tests for them. bgtasks must not change what they do.
"""

# No `from __future__ import annotations`: FastAPI must resolve closures' annotations.

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI

from bgtasks import TaskManager, TaskState, logged, retry, timeout
from bgtasks.fastapi import TrackedTasks, lifespan

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


Backend = Literal["asyncio", "trio"]


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


Decorate = Callable[[Callable[..., Any]], Callable[..., Any]]


def stacked(func: Callable[..., Any]) -> Callable[..., Any]:
    """All three decorators, in the documented order."""
    return logged(retry(attempts=2)(timeout(5)(func)))


DECORATIONS: dict[str, Decorate] = {
    "plain": lambda func: func,
    "logged": logged,
    "retry": retry(),
    "timeout": timeout(5),
    "logged+retry+timeout": stacked,
}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial writes ./log.txt: keep it in a temporary directory."""
    monkeypatch.chdir(tmp_path)


def tutorial001(decorate: Decorate, tracked: bool) -> FastAPI:
    """tutorial001, the task function decorated, optionally through the manager."""
    app = FastAPI(lifespan=lifespan(TaskManager()))

    @decorate
    def write_notification(email: str, message: str = "") -> None:
        with open("log.txt", mode="w") as email_file:
            content = f"notification for {email}: {message}"
            email_file.write(content)

    if tracked:

        @app.post("/send-notification/{email}")
        async def send_tracked(email: str, background_tasks: TrackedTasks) -> Any:
            background_tasks.add_task(
                write_notification, email, message="some notification"
            )
            return {"message": "Notification sent in the background"}

    else:

        @app.post("/send-notification/{email}")
        async def send_notification(
            email: str, background_tasks: BackgroundTasks
        ) -> Any:
            background_tasks.add_task(
                write_notification, email, message="some notification"
            )
            return {"message": "Notification sent in the background"}

    return app


def tutorial002(decorate: Decorate, tracked_dependency: bool, tracked: bool) -> FastAPI:
    """tutorial002_an, with tracked tasks in the dependency and/or the endpoint."""
    app = FastAPI(lifespan=lifespan(TaskManager()))

    @decorate
    def write_log(message: str) -> None:
        with open("log.txt", mode="a") as log:
            log.write(message)

    def get_query(background_tasks: BackgroundTasks, q: str | None = None) -> Any:
        if q:
            message = f"found query: {q}\n"
            background_tasks.add_task(write_log, message)
        return q

    def get_query_tracked(background_tasks: TrackedTasks, q: str | None = None) -> Any:
        if q:
            message = f"found query: {q}\n"
            background_tasks.add_task(write_log, message)
        return q

    query = get_query_tracked if tracked_dependency else get_query

    if tracked:

        @app.post("/send-notification/{email}")
        async def send_tracked(
            email: str,
            background_tasks: TrackedTasks,
            q: Annotated[str, Depends(query)],
        ) -> Any:
            message = f"message to {email}\n"
            background_tasks.add_task(write_log, message)
            return {"message": "Message sent"}

    else:

        @app.post("/send-notification/{email}")
        async def send_notification(
            email: str,
            background_tasks: BackgroundTasks,
            q: Annotated[str, Depends(query)],
        ) -> Any:
            message = f"message to {email}\n"
            background_tasks.add_task(write_log, message)
            return {"message": "Message sent"}

    return app


@pytest.mark.parametrize("tracked", [False, True], ids=["BackgroundTasks", "manager"])
@pytest.mark.parametrize("decoration", list(DECORATIONS))
def test_tutorial001(backend: Backend, decoration: str, tracked: bool) -> None:
    """write_notification writes the documented line after the response."""
    app = tutorial001(DECORATIONS[decoration], tracked)
    with TestClient(app, backend=backend) as client:
        response = client.post("/send-notification/foo@example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Notification sent in the background"}
    assert (
        Path("log.txt").read_text()
        == "notification for foo@example.com: some notification"
    )


@pytest.mark.parametrize(
    ("tracked_dependency", "tracked"),
    [(False, False), (True, True), (False, True), (True, False)],
    ids=["plain", "manager", "endpoint-tracked", "dependency-tracked"],
)
@pytest.mark.parametrize("decoration", list(DECORATIONS))
def test_tutorial002(
    backend: Backend, decoration: str, tracked_dependency: bool, tracked: bool
) -> None:
    """The dependency's and the endpoint's write_log merge, dependency first."""
    app = tutorial002(DECORATIONS[decoration], tracked_dependency, tracked)
    with TestClient(app, backend=backend) as client:
        response = client.post("/send-notification/foo@example.com?q=some-query")
        assert response.status_code == 200, response.text
        assert response.json() == {"message": "Message sent"}
        assert (
            Path("log.txt").read_text()
            == "found query: some-query\nmessage to foo@example.com\n"
        )
        client.post("/send-notification/bar@example.com")
    assert (
        Path("log.txt").read_text().splitlines(keepends=True)[-1]
        == "message to bar@example.com\n"
    )


def test_tutorial_tasks_are_tracked(backend: Backend) -> None:
    """Through the manager, each write_log call is a SUCCEEDED task, in order."""
    manager = TaskManager()
    app = tutorial002(logged, True, True)
    app.router.lifespan_context = lifespan(manager)
    with TestClient(app, backend=backend) as client:
        client.post("/send-notification/foo@example.com?q=some-query")
    infos = manager.list()
    assert [i.name.rsplit(".", 1)[-1] for i in infos] == ["write_log", "write_log"]
    assert {TaskState.SUCCEEDED} == {i.state for i in infos}
    # Newest first: the endpoint's task was added after the dependency's.
    assert infos[0].created_at >= infos[1].created_at
