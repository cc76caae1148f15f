"""One entered coredis client per event loop, opened lazily, every call bounded in time.

A coredis 6 client must be entered (``async with client``) by a task that
later exits it, and its connections' reader and writer tasks live in that
task's task group. A store made at import time cannot ask its users for that,
so each event loop that uses the store gets a *host*: a system task of the
loop (see :mod:`._spawn`) that enters the client, keeps it entered and exits
it on :meth:`Connector.aclose` or when the loop shuts down. Callers on that
loop, from any task, then send their commands through the host's client.

A client the user passes in is theirs: they enter and close it, and it serves
the loop they entered it on.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import anyio.abc
import coredis
import coredis.exceptions
from coredis.commands import Script

from ._errors import BackendUnavailableError
from ._spawn import call_soon_threadsafe, current_loop, spawn_system_task

__all__ = ["Connector", "Host"]

T = TypeVar("T")

#: What a failed Redis call may raise, beside cancellation: all of it means
#: "the store cannot answer now".
_UNAVAILABLE = (
    coredis.exceptions.RedisError,
    OSError,
    TimeoutError,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
    anyio.EndOfStream,
)


async def _evalsha(
    client: coredis.Redis[bytes],
    script: Script[bytes],
    keys: tuple[str, ...],
    args: tuple[str | int | bytes, ...],
) -> object:
    """EVALSHA ``script``, loading it once on NOSCRIPT (a new or restarted server).

    Plain ``evalsha`` rather than calling the ``Script``: its retry and
    transform wrappers cost about as much as a tenth of the round trip.
    """
    try:
        return await client.evalsha(script.sha, keys, args)
    except coredis.exceptions.NoScriptError:
        await client.script_load(script.script)
        return await client.evalsha(script.sha, keys, args)


class Host:
    """The task of one event loop that keeps that loop's client entered."""

    __slots__ = (
        "client",
        "closed",
        "error",
        "handle",
        "loop",
        "ready",
        "stop",
        "task_group",
    )

    def __init__(self, loop: object, client: coredis.Redis[bytes]) -> None:
        self.loop = loop
        self.client = client
        self.ready = anyio.Event()
        self.stop = anyio.Event()
        self.closed = anyio.Event()
        self.error: BaseException | None = None
        self.task_group: anyio.abc.TaskGroup | None = None
        self.handle: object = None

    async def run(self, forget: Callable[[Host], None]) -> None:
        """Enter the client and hold it until told to stop or the loop ends."""
        try:
            async with self.client, anyio.create_task_group() as tg:
                self.task_group = tg
                self.ready.set()
                await self.stop.wait()
                tg.cancel_scope.cancel()
        except Exception as exc:  # a system task must not raise: report it instead
            self.error = exc
        finally:
            self.task_group = None
            forget(self)
            self.ready.set()
            self.closed.set()


class Connector:
    """Sends coredis calls to the current loop's client, with a timeout.

    Args:
        factory: makes a fresh, not yet entered client (one per loop); or
        client: a client the caller has entered and will close.
        timeout: seconds each call may take, connecting included.
        where: how errors name the server (no credentials).
        bounded: the factory's clients bound each phase of a call by
            ``timeout`` themselves (``connect_timeout`` and ``stream_timeout``).
    """

    __slots__ = (
        "_bounded",
        "_factory",
        "_hosts",
        "_lock",
        "_own_client",
        "timeout",
        "where",
    )

    def __init__(
        self,
        *,
        factory: Callable[[], coredis.Redis[bytes]] | None,
        client: coredis.Redis[bytes] | None,
        timeout: float,
        where: str,
        bounded: bool = False,
    ) -> None:
        self._factory = factory
        self._own_client = client
        self._bounded = bounded and factory is not None
        self._hosts: dict[object, Host] = {}
        self._lock = threading.Lock()
        self.timeout = timeout
        self.where = where

    async def call(self, fn: Callable[[coredis.Redis[bytes]], Awaitable[T]]) -> T:
        """Await ``fn(client)``; a failure or timeout raises BackendUnavailableError."""
        host = self._ready_host()
        try:
            if host is not None:
                return await fn(host.client)
            # A bare cancel scope, not fail_after(): the same deadline without
            # a generator-based context manager.
            with anyio.CancelScope(deadline=anyio.current_time() + self.timeout):
                return await fn(await self.client())
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc
        # Only the deadline gets here: the scope swallowed its own cancellation.
        raise self._late()

    async def script(
        self,
        script: Script[bytes],
        keys: tuple[str, ...],
        args: tuple[str | int | bytes, ...],
    ) -> object:
        """Run ``script`` as :meth:`call` would, without a closure: the hot path."""
        host = self._ready_host()
        if host is None:
            return await self.call(lambda client: _evalsha(client, script, keys, args))
        try:
            return await _evalsha(host.client, script, keys, args)
        except _UNAVAILABLE as exc:
            raise self._unavailable(exc) from exc

    def _ready_host(self) -> Host | None:
        """Return this loop's host if its client is up and bounds its own calls."""
        if not self._bounded:
            return None
        # No cancel scope of ours then: its enter and exit cost about a tenth
        # of a loopback round trip (trio) or a twentieth (asyncio).
        host = self._hosts.get(current_loop())
        if host is None or host.task_group is None or host.stop.is_set():
            return None
        return host

    def _unavailable(self, exc: BaseException) -> BackendUnavailableError:
        if self._bounded and isinstance(exc, TimeoutError):
            return self._late()  # our client's connect or reply timeout: ours
        return BackendUnavailableError(
            f"Redis at {self.where} failed: {type(exc).__name__}: {exc}"
        )

    def _late(self) -> BackendUnavailableError:
        return BackendUnavailableError(
            f"Redis at {self.where} did not answer within {self.timeout:g}s "
            "(RedisStore(timeout=...) sets the limit)."
        )

    async def client(self) -> coredis.Redis[bytes]:
        """Return the current loop's entered client, starting its host if needed."""
        if self._own_client is not None:
            return self._own_client
        loop = current_loop()
        host = self._hosts.get(loop)
        if host is None or host.stop.is_set():
            host = self._start(loop)
        if not host.ready.is_set():
            await host.ready.wait()
        if host.task_group is None:
            error = host.error
            raise (
                error
                if error is not None
                else coredis.exceptions.ConnectionError("the connection was closed")
            )
        return host.client

    def _start(self, loop: object) -> Host:
        assert self._factory is not None
        host = Host(loop, self._factory())
        with self._lock:
            self._hosts[loop] = host
        host.handle = spawn_system_task(loop, lambda: host.run(self._forget))
        return host

    def _forget(self, host: Host) -> None:
        with self._lock:
            if self._hosts.get(host.loop) is host:
                del self._hosts[host.loop]

    async def aclose(self) -> None:
        """Close every loop's client; this loop's before returning, others soon after.

        The connector stays usable: a later call opens a new client.
        """
        with self._lock:
            hosts = list(self._hosts.values())
        here: Any = None
        if self._own_client is None and hosts:
            here = current_loop()
        for host in hosts:
            if host.loop is here:
                host.stop.set()
                await host.closed.wait()
            else:
                # anyio events belong to their loop: set it on the host's own.
                call_soon_threadsafe(host.loop, host.stop.set)
