"""The example app (examples/app.py) and the demo's scenarios, under TestClient."""

from __future__ import annotations

import importlib.util
import logging
import logging.config
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

import anyio
import httpx
import pytest

pytest.importorskip("multipart", reason="the example's upload needs python-multipart")
pytest.importorskip("uvicorn", reason="the demo runs the app under uvicorn")

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

Backend = Literal["asyncio", "trio"]
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str, *, register: bool = True) -> ModuleType:
    """Import examples/<name>.py the way ``python examples/demo.py`` would.

    With ``register=False`` it runs the file again as a new module, as a fresh
    process would, and leaves ``sys.modules`` alone.
    """
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo, after the block, what the example and uvicorn configure in logging."""
    names = ["bgtasks", "example", "uvicorn", "uvicorn.error", "uvicorn.access"]
    loggers = [logging.getLogger(name) for name in names]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate, disabled) in zip(
            loggers, saved, strict=True
        ):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
            lg.disabled = disabled


# The app configures logging on import: keep that out of the rest of the suite.
with logging_restored():
    example = load("app")
    demo = load("demo")
FAST = example.Settings(
    smtp_failures=2,
    report_page_seconds=0.005,
    thumbnail_step_seconds=0.002,
    drain_timeout=0.2,
)


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


@pytest.fixture
def client(backend: Backend) -> Iterator[TestClient]:
    """The example app with fast settings, its lifespan running."""
    example.welcome_emails.clear()
    with TestClient(example.create_app(FAST), backend=backend) as client:
        yield client


def test_task_logs_show_under_uvicorns_logging(
    backend: Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """Imported after uvicorn's default logging, the app shows bgtasks' INFO lines."""
    from uvicorn.config import LOGGING_CONFIG

    with logging_restored():
        logging.config.dictConfig(LOGGING_CONFIG)  # what `uvicorn app:app` does first
        app_module = load("app", register=False)
        with TestClient(app_module.create_app(FAST), backend=backend) as client:
            demo.thumbnails(client, lambda line: None)
    lines = capsys.readouterr().err.splitlines()
    succeeded = [line for line in lines if "make_thumbnails succeeded" in line]
    assert len(succeeded) == 1
    assert " INFO bgtasks: " in succeeded[0]
    assert "attempt=1 outcome=succeeded]" in succeeded[0]


def test_report_polled_to_completion(client: TestClient) -> None:
    """A report is polled through /tasks with its progress until it succeeds."""
    lines: list[str] = []
    demo.report_to_completion(client, lines.append)
    assert lines[-1] == '  succeeded -> {"report_id": "activity-7", "pages": 4}'
    assert any("page 4 of 4" in line for line in lines)


def test_welcome_email_retried_and_deduplicated(client: TestClient) -> None:
    """The flaky SMTP send succeeds on attempt 3, and a second signup sends nothing."""
    lines: list[str] = []
    demo.welcome_email_retried_then_deduplicated(client, lines.append)
    assert "  succeeded on attempt 3, message msg-1" in lines
    assert client.get("/outbox").json() == {
        "attempts": 3,
        "delivered": [
            {"message_id": "msg-1", "to": "ada@example.com", "subject": "Welcome!"}
        ],
    }


def test_thumbnails_and_report_cancel(client: TestClient) -> None:
    """Thumbnails succeed in the thread pool; a long report is cancelled over HTTP."""
    lines: list[str] = []
    demo.thumbnails(client, lines.append)
    response = client.post("/reports", params={"user_id": 1, "pages": 1000})
    demo.cancel(client, response.json()["task_id"], "report", lines.append)
    assert lines[-1].startswith("  DELETE -> 202; report cancelled at")


def test_shutdown_drains_then_cancels(backend: Backend) -> None:
    """At shutdown the short report finishes and the long one is cancelled."""
    app = example.create_app(FAST)
    with TestClient(app, backend=backend) as client:
        short, long = demo.start_before_shutdown(client)
    lines: list[str] = []
    demo.check_shutdown(app, short, long, lines.append)
    assert "short report succeeded" in lines[0]


@pytest.mark.parametrize(
    ("request_kwargs", "status"),
    [
        ({"url": "/reports", "params": {"user_id": 1, "pages": 0}}, 422),
        ({"url": "/users", "json": {"email": "nope", "username": "x"}}, 422),
        ({"url": "/images", "files": {"file": ("a.txt", b"hi", "text/plain")}}, 415),
        (
            {
                "url": "/images",
                "files": {"file": ("a.png", b"x" * 6_000_000, "image/png")},
            },
            413,
        ),
    ],
)
def test_bad_requests(
    client: TestClient, request_kwargs: dict[str, Any], status: int
) -> None:
    """Out-of-range pages, bad emails, non-images and huge uploads are refused."""
    assert client.post(**request_kwargs).status_code == status


def test_task_routes_in_openapi(client: TestClient) -> None:
    """The example's OpenAPI schema documents the task routes."""
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/tasks", "/tasks/{task_id}", "/users", "/reports", "/images"} <= set(paths)


@pytest.mark.anyio
async def test_thumbnail_job_cancelled_at_a_checkpoint() -> None:
    """A sync thumbnail task stops at checkpoint() when cancelled through the API."""
    slow = example.Settings(thumbnail_step_seconds=0.02)
    app = example.create_app(slow)
    transport = httpx.ASGITransport(app=app)
    results: list[httpx.Response] = []

    async def upload(client: httpx.AsyncClient) -> None:
        # The request lasts until its background tasks end, so it runs aside.
        files = {"file": ("cat.png", demo.IMAGE, "image/png")}
        results.append(await client.post("/images", files=files))

    with anyio.fail_after(10):
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://t") as client,
            anyio.create_task_group() as tg,
        ):
            manager = app.state.bgtasks_manager
            tg.start_soon(upload, client)
            while not [t for t in manager.list() if t.progress]:
                await anyio.sleep(0.005)
            [task] = manager.list()
            response = await client.delete(f"/tasks/{task.id}")
            assert response.status_code == 202
            info = await manager.wait(task.id, timeout=5)
    assert info.state.value == "cancelled"
    assert info.progress is not None
    assert info.progress < 1.0
    assert results[0].status_code == 202


def test_demo_runs_end_to_end(capsys: pytest.CaptureFixture[str]) -> None:
    """`nox -s demo`'s script passes against uvicorn on loopback and says OK."""
    assert demo.main() == 0
    out = capsys.readouterr().out
    assert "OK: everything as expected" in out
    assert "deduplicated: same message msg-1, 1 email delivered in total" in out
