"""Shared fixtures: every async test runs on asyncio and on trio."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import anyio
import pytest

from bgtasks._manager.engine import Engine

# Real redis-server processes, for the tests of bgtasks.redis.
pytest_plugins = ["conftest_otel", "conftest_redis"]


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once per backend."""
    return str(request.param)


@pytest.fixture(params=[True, False], ids=["task-handles", "own-scopes"])
def task_handles(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> bool:
    """Run a TaskManager test with anyio's task handles and with the fallback.

    anyio >= 4.14 returns a cancellable handle from ``start_soon``; older
    releases (down to the 4.11 floor) get a cancel scope per task instead.
    """
    if request.param and not hasattr(anyio, "TaskHandle"):
        pytest.skip("anyio < 4.14 has no task handles; the fallback is tested")
    monkeypatch.setattr(Engine, "_use_task_handles", request.param)
    return bool(request.param)


class _ListHandler(logging.Handler):
    """Keeps every record it is handed, from any thread."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[list[logging.LogRecord]]:
    """The records of the ``bgtasks`` logger during the test, from DEBUG up."""
    logger = logging.getLogger("bgtasks")
    handler, level = _ListHandler(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)
