"""Work around a coredis 6.9 leak: a failed connection attempt leaves streams open.

``BaseConnection`` makes its memory streams in ``__init__`` and closes them
only once connected, so each failed attempt (Redis down) leaves six unclosed
streams, which warn when collected. These subclasses close them whatever
happens; the pools of clients made by ``RedisStore.from_url`` use them.
"""

from __future__ import annotations

from typing import Any, cast

import anyio
import anyio.abc
import coredis
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from coredis.connection import TCPConnection, UnixDomainSocketConnection

__all__ = ["close_streams_on_exit"]


def _close_streams(connection: object) -> None:
    for value in list(vars(connection).values()):
        if isinstance(value, (MemoryObjectSendStream, MemoryObjectReceiveStream)):
            value.close()


class _TCPConnection(TCPConnection):
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            _close_streams(self)


class _UnixConnection(UnixDomainSocketConnection):
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        try:
            await super().run(task_status=task_status)
        finally:
            _close_streams(self)


def close_streams_on_exit(client: coredis.Redis[bytes]) -> coredis.Redis[bytes]:
    """Make ``client``'s pool use connections that always close their streams."""
    pool = cast("Any", client.connection_pool)
    if issubclass(pool.connection_class, UnixDomainSocketConnection):
        pool.connection_class = _UnixConnection
    elif issubclass(pool.connection_class, TCPConnection):
        pool.connection_class = _TCPConnection
    return client
