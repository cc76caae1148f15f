"""The dashboard's live updates: task changes, coalesced, as Server-Sent Events.

One :class:`ChangeFeed` serves every open page of a dashboard. While at least
one page listens, it subscribes to the manager; each event only records the
task's latest snapshot in a dict (so a task that changes ten times in a window
is sent once). Every ``TICK`` seconds one of the streams cuts the window into
a batch, encodes it once, and every stream sends those same bytes: ten pages
cost about what one does. Progress is not an event, so running tasks are
re-read every ``POLL`` seconds and the changed ones join the batch. With a
shared backend that offers it, the other workers' changed tasks are read at
the same pace (one bounded read, while a page listens: none otherwise) and
join the batch too; while the backend cannot answer, that read pauses for
``REMOTE_RETRY`` seconds and the local changes flow on.

Memory stays bounded: the feed keeps only the last ``RING`` batches; a stream
that falls further behind (a slow client) is told to ``resync`` (reload its
page) instead of being queued for. A stream ends when the client leaves, when
the manager stops (the app's shutdown), after ``LIFETIME`` seconds (servers
such as uvicorn wait for open responses before shutting down; the browser
reconnects at once), or when one send is stuck for ``SEND_TIMEOUT``.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
from starlette.responses import Response

from ..._manager.records import TaskInfo
from ...exceptions import BackendUnavailableError

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from .source import TaskSource

__all__ = ["ChangeFeed", "EventStream"]

TICK = 0.25  # the coalescing window, seconds
POLL = 0.5  # how often running tasks' progress is re-read
STATS_EVERY = 2.0  # how often fresh statistics ride along with a batch
HEARTBEAT = 15.0  # a comment line keeps idle proxies from closing the stream
LIFETIME = 10.0  # then the stream ends and the browser reconnects
SEND_TIMEOUT = 10.0  # a client that takes longer to accept one chunk is dropped
RING = 8  # batches kept for streams that are behind
MAX_BATCH = 1000  # tasks per batch; beyond, pages reload instead
RECONNECT_MS = 1000  # what EventSource waits before it reconnects
REMOTE_TIMEOUT = 0.5  # a read of other workers' changes may hold a batch this long
REMOTE_RETRY = 2.0  # then, after a failed read, the next waits this long

_Render = Callable[[TaskInfo], dict[str, Any]]
_Stats = Callable[[], Awaitable[dict[str, Any]]]
_Send = Callable[[bytes], Awaitable[None]]


def _event(name: str, data: object) -> bytes:
    # json.dumps escapes every non-ASCII character and never emits a newline,
    # so one ``data:`` line always holds the whole value.
    body = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()


class ChangeFeed:
    """Fan one manager's task changes out to every open dashboard stream."""

    def __init__(
        self,
        source: TaskSource,
        render: _Render,
        stats: _Stats,
    ) -> None:
        # Read at construction, so tests can shorten them module-wide.
        self.tick, self.poll, self.lifetime = TICK, POLL, LIFETIME
        self.send_timeout, self.ring, self.max_batch = SEND_TIMEOUT, RING, MAX_BATCH
        self.stats_every, self.heartbeat = STATS_EVERY, HEARTBEAT
        self.remote_timeout, self.remote_retry = REMOTE_TIMEOUT, REMOTE_RETRY
        self._source = source
        self._render = render
        self._stats = stats
        self._lock = threading.Lock()  # events arrive from worker threads too
        self._pending: dict[str, TaskInfo] = {}
        self._streams = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._seq = 0
        self._batches: deque[tuple[int, bytes]] = deque(maxlen=self.ring)
        self._cut_at = self._polled_at = self._stats_at = 0.0
        self._seen: dict[str, tuple[object, ...]] = {}
        self._wake: anyio.Event | None = None
        self._cutting = False
        # Where this feed is in the backend's change feed (None: not yet read).
        self._remote: str | None = None
        self._remote_paused_until = -math.inf

    @property
    def streams(self) -> int:
        """How many streams are open (0: the feed is unsubscribed and empty)."""
        return self._streams

    def _on_change(self, info: TaskInfo) -> None:
        with self._lock:
            self._pending[info.id] = info

    def _attach(self) -> anyio.Event:
        if self._streams == 0:
            self._reset()
            self._wake = anyio.Event()
            self._cut_at = anyio.current_time()
            self._unsubscribe = self._source.subscribe(self._on_change)
        self._streams += 1
        assert self._wake is not None
        return self._wake

    def _detach(self) -> None:
        self._streams -= 1
        if self._streams == 0:
            if self._unsubscribe is not None:  # pragma: no branch
                self._unsubscribe()
                self._unsubscribe = None
            with self._lock:
                self._pending = {}
            self._reset()

    def _poll_progress(self) -> None:
        """Add running tasks whose progress, message or attempt changed."""
        seen: dict[str, tuple[object, ...]] = {}
        changed: list[TaskInfo] = []
        for info in self._source.active():
            key = (info.progress, info.message, info.attempt, info.cancel_requested)
            seen[info.id] = key
            if self._seen.get(info.id) != key:
                changed.append(info)
        self._seen = seen  # only running tasks: bounded by what runs
        with self._lock:
            pending = self._pending
            for info in changed:
                queued = pending.get(info.id)
                # An event that finished the task is newer than any poll.
                if queued is None or not queued.state.is_finished:
                    pending[info.id] = info

    async def _pull_remote(self, now: float) -> bool:
        """Add the tasks other workers changed; True if pages should reload."""
        if now < self._remote_paused_until or not self._source.shared:
            return False
        found, failed = None, True
        with (
            anyio.move_on_after(self.remote_timeout),
            contextlib.suppress(BackendUnavailableError),
        ):
            found, failed = await self._source.changes(self._remote), False
        if failed:  # down or slow: let the local changes flow meanwhile
            self._remote_paused_until = now + self.remote_retry
            return False
        if found is None:
            return False
        first, self._remote = self._remote is None, found.position
        if first or found.resync:
            return not first  # the first read only marks where this feed starts
        with self._lock:
            pending = self._pending
            for info in found.tasks:
                queued = pending.get(info.id)
                if queued is None or not queued.state.is_finished:
                    pending[info.id] = info
        return False

    async def _cut(self, now: float) -> None:
        """Turn the window's changes into one encoded batch, if it is over.

        One stream cuts at a time; the others are woken by its batch. The
        awaits (other workers' changes, the statistics) come before the
        window is taken, so batches leave in the order their changes came.
        """
        if now - self._cut_at < self.tick or self._cutting:
            return
        self._cut_at = now
        self._cutting = True
        try:
            await self._cut_window(now)
        finally:
            self._cutting = False

    async def _cut_window(self, now: float) -> None:
        reload = False
        if now - self._polled_at >= self.poll:
            self._polled_at = now
            self._poll_progress()
            reload = await self._pull_remote(now)
        stats = b""
        if (self._pending or reload) and now - self._stats_at >= self.stats_every:
            self._stats_at = now
            stats = _event("stats", await self._stats())
        with self._lock:
            pending, self._pending = self._pending, {}
        chunk = _event("resync", {}) if reload else b""
        if pending:
            infos = list(pending.values())
            resync = len(infos) > self.max_batch
            if resync:  # keep the newest; pages reload for the rest
                infos.sort(key=lambda info: info.created_at, reverse=True)
                del infos[self.max_batch :]
            tasks = [self._render(info) for info in infos]
            chunk += _event("tasks", {"tasks": tasks, "resync": resync})
        if not chunk:
            return
        chunk += stats
        self._seq += 1
        self._batches.append((self._seq, chunk))
        wake, self._wake = self._wake, anyio.Event()
        if wake is not None:  # pragma: no branch
            wake.set()

    def _since(self, seq: int) -> tuple[bytes, int]:
        """Return the batches after ``seq``, or a resync if some were dropped."""
        if seq >= self._seq:
            return b"", seq
        oldest = self._batches[0][0]
        if seq + 1 < oldest:
            return _event("resync", {}), self._seq
        return b"".join(chunk for number, chunk in self._batches if number > seq), (
            self._seq
        )

    async def serve(self, send: _Send) -> None:
        """Send this stream's events until it should end (see the module)."""
        if not self._source.running:
            return
        self._attach()
        try:
            seq = self._seq
            hello = _event("hello", {"tick": self.tick})
            await self._send(send, f"retry: {RECONNECT_MS}\n\n".encode() + hello)
            now = anyio.current_time()
            ends, quiet_since = now + self.lifetime, now
            while now < ends and self._source.running:
                wake = self._wake
                assert wake is not None
                with anyio.move_on_after(self.tick):
                    await wake.wait()
                now = anyio.current_time()
                await self._cut(now)
                chunk, seq = self._since(seq)
                if not chunk and now - quiet_since >= self.heartbeat:
                    chunk = b": keep-alive\n\n"
                if chunk:
                    quiet_since = now
                    await self._send(send, chunk)
        finally:
            self._detach()

    async def _send(self, send: _Send, chunk: bytes) -> None:
        with anyio.fail_after(self.send_timeout):
            await send(chunk)


class EventStream(Response):
    """A ``text/event-stream`` response fed by a :class:`ChangeFeed`.

    It listens for the client's disconnect itself and always detaches from the
    feed, whichever way the stream ends.
    """

    media_type = "text/event-stream"

    def __init__(self, feed: ChangeFeed, headers: dict[str, str]) -> None:
        super().__init__(headers=headers)
        # Response sized its empty body; a stream has no Content-Length.
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self._feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the stream as an ASGI response."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": self.raw_headers,
            }
        )

        async def send_chunk(chunk: bytes) -> None:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})

        gone = False
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                nonlocal gone
                message: Message = {}
                while message.get("type") != "http.disconnect":
                    message = await receive()
                gone = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            try:
                await self._feed.serve(send_chunk)
            except (OSError, TimeoutError):  # the client went away, or stalled
                gone = True
            tg.cancel_scope.cancel()
        if not gone:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
