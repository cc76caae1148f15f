"""Fixtures for tests against real ``redis-server`` processes.

Loaded from ``conftest.py`` (``pytest_plugins``). Without the binary, a test
that needs Redis skips with the reason, except under ``CI=true``, where it
fails: CI installs Debian's redis-server (``.ci/run``) and must prove Redis.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_server import RedisServer, redis_server_binary

__all__ = ["private_redis", "redis_prefix", "redis_server", "redis_url"]

_MISSING = (
    "redis-server not found: install Debian's redis-server package (.ci/run does)"
)


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


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, kill or restart."""
    binary = _require_binary()
    server = RedisServer(tmp_path, binary).start()
    try:
        yield server
    finally:
        server.kill()
