"""Fixtures for tests against real ``redis-server`` processes.

Loaded from ``conftest.py`` (``pytest_plugins``), so its hooks see the whole
run. Without the binary, a test that needs Redis skips with the reason,
except under ``CI=true``, where it fails: CI installs Debian's redis-server
(``.ci/run``) and must prove Redis. Without coredis (the ``redis`` extra,
left out of the ``tests_lowest`` session, whose typing-extensions floor is
older than coredis allows), whatever imports it is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_server import (
    RedisCluster,
    RedisServer,
    redis_cli_binary,
    redis_server_binary,
)

__all__ = [
    "private_redis",
    "redis_cluster",
    "redis_prefix",
    "redis_server",
    "redis_url",
]

_MISSING = (
    "redis-server not found: install Debian's redis-server package (.ci/run does)"
)


HAVE_COREDIS = importlib.util.find_spec("coredis") is not None
_NO_COREDIS = "coredis is not installed: install the redis extra (bgtasks[redis])"
# What imports coredis: the Redis modules and their doctests, their tests, and
# the pages and public-API checks that import bgtasks.redis.
_NEEDS_COREDIS = (
    "test_redis_store.py",
    "test_redis_tasks.py",
    "test_redis_idempotent.py",
    "test_redis_backend.py",
    "test_redis_dashboard.py",
    "test_e2e_workers.py",
    "test_redis_cluster.py",
    "redis_workers.py",
)
_ITEMS_NEEDING_COREDIS = ("docs/workers.md", "bgtasks.redis")


@pytest.fixture(scope="session", autouse=True)
def _close_coredis_streams() -> Iterator[None]:
    """Close what coredis 6.9 leaves open when a connection attempt fails.

    Its connection makes six memory streams up front and closes them only once
    connected, so a refused attempt (a test that stops Redis) warns whenever
    the garbage collector gets to it: in another test, or at exit, which fails
    the run under warnings-as-errors. bgtasks' own clients get the same fix
    from ``bgtasks._redis._streams``; this covers the raw clients of the tests.
    """
    if not HAVE_COREDIS:
        yield
        return
    from anyio.streams.memory import (
        MemoryObjectReceiveStream,
        MemoryObjectSendStream,
    )
    from coredis.connection import BaseConnection

    original = BaseConnection.run

    async def run(self: BaseConnection, **kwargs: Any) -> None:
        try:
            await original(self, **kwargs)
        finally:
            for value in list(vars(self).values()):
                if isinstance(
                    value, (MemoryObjectSendStream, MemoryObjectReceiveStream)
                ):
                    value.close()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BaseConnection, "run", run)
        yield


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Leave out the files that import coredis when it is not installed."""
    if HAVE_COREDIS:
        return None
    parts = collection_path.parts
    if collection_path.name in _NEEDS_COREDIS or "_redis" in parts:
        return True
    if collection_path.name == "redis.py" and "bgtasks" in parts:
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the page and API checks of bgtasks.redis when coredis is missing."""
    if HAVE_COREDIS:
        return
    skip = pytest.mark.skip(reason=_NO_COREDIS)
    for item in items:
        if any(name in item.nodeid for name in _ITEMS_NEEDING_COREDIS):
            item.add_marker(skip)


def _require_binary() -> str:
    binary = redis_server_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(_MISSING + "; under CI=true this is a failure, not a skip")
        pytest.skip(_MISSING)
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for the whole run; tests keep apart by key prefix."""
    binary = _require_binary()
    server = RedisServer(tmp_path_factory.mktemp("redis"), binary).start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the shared redis-server."""
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A three-primary Redis Cluster for the whole run (redis-cli joins it)."""
    _require_binary()
    if redis_cli_binary() is None:
        reason = (
            "redis-cli not found: install Debian's redis-tools (redis-server brings it)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason + "; under CI=true this is a failure, not a skip")
        pytest.skip(reason)
    cluster = RedisCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.kill()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, kill or restart."""
    binary = _require_binary()
    server = RedisServer(tmp_path, binary).start()
    try:
        yield server
    finally:
        server.kill()
