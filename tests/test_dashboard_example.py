"""The example app mounts the dashboard, which then shows the app's tasks."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType
from typing import Literal

import pytest

pytest.importorskip("multipart", reason="the example's upload needs python-multipart")

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "app.py"


def load_example() -> ModuleType:
    """Import examples/app.py under a name of its own."""
    spec = importlib.util.spec_from_file_location("dashboard_example_app", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
def test_example_serves_its_dashboard(anyio_backend: str) -> None:
    """GET /dashboard is the page, and its data lists a report the app started."""
    backend: Literal["asyncio", "trio"] = (
        "trio" if anyio_backend == "trio" else "asyncio"
    )
    example = load_example()
    settings = example.Settings(report_page_seconds=0.001, drain_timeout=0.1)
    with TestClient(example.create_app(settings), backend=backend) as client:
        page = client.get("/dashboard")
        assert page.status_code == 200
        assert "Background tasks" in page.text
        task_id = client.post("/reports", params={"user_id": 7}).json()["task_id"]
        tasks = client.get("/dashboard/api/tasks").json()["tasks"]
        assert [t["id"] for t in tasks] == [task_id]
        assert tasks[0]["name"] == "generate_report"
