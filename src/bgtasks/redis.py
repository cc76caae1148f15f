"""Share bgtasks' state across worker processes and hosts through Redis (or Valkey).

Needs the ``redis`` extra: ``pip install "bgtasks[redis]"`` (coredis, which
runs on asyncio and trio alike). Its errors live in :mod:`bgtasks.exceptions`.

Examples:
    >>> from bgtasks.redis import RedisBackend, RedisStore
    >>> store = RedisStore.from_url("redis://localhost:6379/0", prefix="shop")
    >>> backend = RedisBackend.from_url("redis://localhost:6379/0", prefix="shop")
"""

from __future__ import annotations

from ._redis._codec import JSONSerializer, Serializer
from ._redis._store import RedisStore
from ._redis.backend import RedisBackend

__all__ = [
    "JSONSerializer",
    "RedisBackend",
    "RedisStore",
    "Serializer",
]
