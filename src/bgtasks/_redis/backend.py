"""``RedisBackend``: a TaskManager's task state shared by every worker through Redis.

The manager still runs its tasks locally; the backend's :class:`TaskMirror`
writes each transition to Redis, heartbeats this worker's lease, reports a
lost worker's tasks ``interrupted`` and relays cancels. This module turns the
mirror's text fields into :class:`~bgtasks.TaskInfo` and the mirror's list
positions into the manager's opaque cursors.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, cast
from urllib.parse import urlsplit

import anyio
import coredis

from .._manager.backend import SharedChanges, SharedStats
from .._manager.records import TaskError, TaskInfo, TaskState
from .._validate import check_int, to_seconds
from ._store import _SCHEMES, _verified_tls  # pyright: ignore[reportPrivateUsage]
from ._streams import close_streams_on_exit
from .tasks import Client, TaskMirror

__all__ = ["RedisBackend"]

_STATES = {state.value: state for state in TaskState}
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,400}")
_CURSOR_VERSION = 1


class RedisBackend:
    """Share a TaskManager's tasks with every worker through Redis (or Valkey).

    Pass it as ``TaskManager(backend=...)``. The manager still runs its own
    tasks and mirrors each transition to Redis; its async reads
    (``aget``, ``alist``, ``cancel``, ``wait``) and the HTTP routes then
    answer for the tasks of every worker that shares the prefix. A worker
    that stops heartbeating for ``lease`` seconds has its unfinished tasks
    reported ``interrupted`` by the first worker that notices.

    One backend serves one manager at a time. A client you pass in is yours:
    enter it (``async with client``) before the manager and close it after;
    :meth:`from_url` makes one that the manager opens and closes itself.

    Args:
        client: a ``coredis.Redis(..., decode_responses=True)`` (or
            ``RedisCluster``), entered by you.
        prefix: the first part of every key: one per application.
        lease: seconds a worker may go without heartbeating before its tasks
            are declared interrupted; it heartbeats every ``lease / 3``. At
            least 3 x ``timeout``.
        timeout: seconds any one Redis call may take.
        max_finished: finished tasks kept in Redis (the oldest are dropped).
        finished_ttl: seconds a finished task is kept in Redis.
        max_pending: tasks whose updates may wait in memory while Redis is
            unreachable; past it the oldest unfinished updates are dropped,
            with a WARNING.

    Raises:
        TypeError: an argument has the wrong type.
        ValueError: an argument is out of range.

    Example:
        ```python
        from bgtasks import TaskManager
        from bgtasks.redis import RedisBackend

        manager = TaskManager(backend=RedisBackend.from_url("redis://localhost:6379/0"))
        ```
    """

    def __init__(
        self,
        client: Client,
        *,
        prefix: str = "bgtasks",
        lease: float = 10.0,
        timeout: float = 2.0,
        max_finished: int = 10_000,
        finished_ttl: float = 3600.0,
        max_pending: int = 100_000,
    ) -> None:
        if not isinstance(
            cast("object", client), (coredis.Redis, coredis.RedisCluster)
        ):
            raise TypeError(
                "RedisBackend(client) takes a coredis.Redis or coredis.RedisCluster "
                f"made with decode_responses=True, got {type(client).__name__}; "
                "or use RedisBackend.from_url(url)."
            )
        self._settings = _settings(
            prefix=prefix,
            lease=lease,
            timeout=timeout,
            max_finished=max_finished,
            finished_ttl=finished_ttl,
            max_pending=max_pending,
        )
        self._client = client
        self._owns_client = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._mirror: TaskMirror | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "bgtasks",
        lease: float = 10.0,
        timeout: float = 2.0,
        max_finished: int = 10_000,
        finished_ttl: float = 3600.0,
        max_pending: int = 100_000,
    ) -> RedisBackend:
        """Return a backend whose client the manager opens and closes itself.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
                for TLS (certificate and host name verified unless the URL
                says otherwise), or ``unix:///path/to/redis.sock``.
            prefix: as for :class:`RedisBackend`.
            lease: as for :class:`RedisBackend`.
            timeout: as for :class:`RedisBackend`.
            max_finished: as for :class:`RedisBackend`.
            finished_ttl: as for :class:`RedisBackend`.
            max_pending: as for :class:`RedisBackend`.

        Raises:
            ValueError: ``url`` is not a Redis URL, or an option is out of range.
            TypeError: an option has the wrong type.
        """
        if not isinstance(cast("object", url), str) or urlsplit(url).scheme not in (
            _SCHEMES
        ):
            raise ValueError(
                "RedisBackend.from_url(url) needs a redis://, rediss:// or unix:// "
                f"URL, got {url!r}."
            )
        client: coredis.Redis[str] = coredis.Redis.from_url(
            _verified_tls(url), decode_responses=True
        )
        close_streams_on_exit(cast("coredis.Redis[bytes]", client))
        backend = cls(
            client,
            prefix=prefix,
            lease=lease,
            timeout=timeout,
            max_finished=max_finished,
            finished_ttl=finished_ttl,
            max_pending=max_pending,
        )
        backend._owns_client = True
        return backend

    @property
    def prefix(self) -> str:
        """The first part of every key this backend writes."""
        return str(self._settings["prefix"])

    def __repr__(self) -> str:
        return (
            f"<RedisBackend prefix={self.prefix!r} lease={self._settings['lease']:g}>"
        )

    # -- what the TaskManager calls (its TaskBackend protocol) --------------

    async def open(self, on_cancel: Callable[[str], object]) -> TaskMirror:
        """Enter the client (if ours) and start the mirror's loop, in this task.

        The manager calls it before entering its task group, and :meth:`close`
        after leaving it, so the scopes nest.

        Raises:
            RuntimeError: another manager uses this backend right now.
        """
        if self._mirror is not None:
            raise RuntimeError(
                "this RedisBackend already serves a running TaskManager: give each "
                "manager its own backend."
            )
        stack = contextlib.AsyncExitStack()
        if self._owns_client:
            await stack.enter_async_context(self._client)
        settings = self._settings
        mirror = TaskMirror(
            self._client,
            prefix=str(settings["prefix"]),
            lease=settings["lease"],
            timeout=settings["timeout"],
            max_finished=int(settings["max_finished"]),
            finished_ttl=settings["finished_ttl"],
            max_pending=int(settings["max_pending"]),
            on_cancel=on_cancel,
        )
        try:
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)  # runs before the group exits
            await group.start(mirror.run)
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._mirror = stack, mirror
        return mirror

    async def close(self) -> None:
        """Write what waits, unregister this worker, close the client if ours."""
        mirror, stack = self._mirror, self._stack
        self._mirror = self._stack = None
        if mirror is not None:
            await mirror.close()
        if stack is not None:
            await stack.aclose()

    def _open_mirror(self) -> TaskMirror:
        mirror = self._mirror
        if mirror is None:
            raise RuntimeError(
                "the TaskManager of this RedisBackend is not running: enter it "
                "first (`async with manager:`, e.g. in the app's lifespan)."
            )
        return mirror

    async def flush(self) -> None:
        """Write this worker's waiting updates now (read-your-writes).

        Raises:
            BackendUnavailableError: Redis failed.
        """
        await self._open_mirror().flush()

    async def get(self, task_id: str) -> TaskInfo | None:
        """Read one task of any worker from Redis; None if Redis has none.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        fields = await self._open_mirror().get(task_id)
        return None if fields is None else info_of(fields)

    async def list(
        self, state: TaskState | None, limit: int, after: str | None
    ) -> tuple[list[TaskInfo], str | None]:
        """Read a page of every worker's tasks, newest first, and the next cursor.

        Raises:
            ValueError: ``after`` is not a cursor of this backend.
            BackendUnavailableError: Redis failed.
        """
        position = None
        if after is not None:
            position = self._decode(after)
            if position is None:
                raise ValueError("not a cursor of this backend")
        rows, following = await self._open_mirror().list(
            state=None if state is None else state.value, limit=limit, cursor=position
        )
        infos = [info for info in map(info_of, rows) if info is not None]
        return infos, None if following is None else self._encode(following)

    async def stats(self) -> SharedStats:
        """Count every worker's tasks per state and time the finished ones' runs.

        Over what Redis keeps: the finished tasks (``max_finished``,
        ``finished_ttl``) and the active tasks of every registered worker.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        found = await self._open_mirror().stats()
        counts = dict.fromkeys(TaskState, 0)
        for value, count in found["counts"].items():
            state = _STATES.get(value)
            if state is not None:
                counts[state] = count
        succeeded = counts[TaskState.SUCCEEDED]
        judged = (
            sum(n for s, n in counts.items() if s.is_finished)
            - counts[TaskState.CANCELLED]
        )
        return SharedStats(
            counts=counts,
            success_rate=succeeded / judged if judged > 0 else None,
            duration_p50=found["p50"],
            duration_p95=found["p95"],
        )

    async def changes(self, after: str | None) -> SharedChanges:
        """Read the tasks other workers changed since ``after`` (None: from now).

        Workers publish which tasks they wrote only while some dashboard
        reads this, at most four times a second each.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        found = await self._open_mirror().changes(after)
        infos = [info for info in map(info_of, found.tasks) if info is not None]
        return SharedChanges(infos, found.position, found.gap)

    def is_cursor(self, after: str) -> bool:
        """Tell whether ``after`` is a cursor this backend made."""
        return self._decode(after) is not None

    async def request_cancel(self, task_id: str) -> bool | None:
        """Ask the worker running ``task_id`` to cancel it.

        Returns True if asked, False if the task is finished already, None if
        Redis knows no such task.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        request = await self._open_mirror().request_cancel(task_id)
        if request.outcome == "requested":
            return True
        return False if request.outcome == "finished" else None

    # -- cursors ---------------------------------------------------------------

    def _encode(self, position: tuple[float, str]) -> str:
        ms, task_id = position
        raw = json.dumps(
            {"v": _CURSOR_VERSION, "p": self.prefix, "t": int(ms), "i": task_id},
            separators=(",", ":"),
        )
        return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")

    def _decode(self, text: object) -> tuple[float, str] | None:
        if not isinstance(text, str) or _CURSOR.fullmatch(text) is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            data: object = json.loads(raw)
        except (binascii.Error, ValueError, RecursionError):
            return None
        if not isinstance(data, dict):
            return None
        fields = cast("dict[str, object]", data)
        ms, task_id = fields.get("t"), fields.get("i")
        if type(ms) is not int or not isinstance(task_id, str):
            return None
        position = (float(ms), task_id)
        # Only the exact text _encode makes: version, prefix and key order.
        return position if self._encode(position) == text else None


def _settings(**options: Any) -> dict[str, Any]:
    """Check RedisBackend's options; return them normalized."""
    prefix = options["prefix"]
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(
            f"RedisBackend(prefix={prefix!r}) takes a non-empty str, e.g. the "
            "application's name, so apps sharing a Redis keep apart."
        )
    lease = to_seconds(options["lease"], "RedisBackend(lease=...)")
    timeout = to_seconds(options["timeout"], "RedisBackend(timeout=...)")
    if lease < 3 * timeout * (1 - 1e-9):  # 0.3 vs 3 x 0.1 in binary floats
        raise ValueError(
            f"RedisBackend(lease={lease:g}) must be at least 3 x timeout "
            f"({timeout:g} s), so one slow call cannot cost a worker its lease: "
            f"raise lease or lower timeout."
        )
    check_int("max_finished", options["max_finished"], minimum=1)
    check_int("max_pending", options["max_pending"], minimum=1)
    ttl = to_seconds(options["finished_ttl"], "RedisBackend(finished_ttl=...)")
    return {
        "prefix": prefix,
        "lease": lease,
        "timeout": timeout,
        "max_finished": options["max_finished"],
        "finished_ttl": ttl,
        "max_pending": options["max_pending"],
    }


def _float(fields: dict[str, str], name: str) -> float | None:
    text = fields.get(name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _moment(fields: dict[str, str], name: str) -> datetime | None:
    seconds = _float(fields, name)
    return None if seconds is None else datetime.fromtimestamp(seconds, timezone.utc)


def info_of(fields: dict[str, str]) -> TaskInfo | None:
    """Turn a task hash read from Redis into a TaskInfo; None if it is not one."""
    state = _STATES.get(fields.get("state", ""))
    created = _moment(fields, "created")
    task_id = fields.get("id")
    if state is None or created is None or not task_id:
        return None  # a partial record (its creating write was lost): not a task
    result: object = None
    if state is TaskState.SUCCEEDED and fields.get("result"):
        try:
            result = json.loads(fields["result"])
        except ValueError:
            result = None
    error = None
    if state is TaskState.FAILED and fields.get("error_type"):
        error = TaskError(fields["error_type"], fields.get("error_message", ""))
    attempt = fields.get("attempt", "")
    return TaskInfo(
        id=task_id,
        name=fields.get("name", ""),
        state=state,
        created_at=created,
        started_at=_moment(fields, "started"),
        finished_at=_moment(fields, "finished"),
        result=result,
        error=error,
        progress=_float(fields, "progress"),
        message=fields.get("message") or None,
        attempt=int(attempt) if attempt.isdigit() else 1,
        cancel_requested=fields.get("cancel_requested") == "1",
        cancel_reason=(fields.get("reason") or None)
        if state in (TaskState.CANCELLED, TaskState.INTERRUPTED)
        else None,
        next_attempt_at=None
        if state.is_finished
        else _moment(fields, "next_attempt_at"),
    )
