"""What a TaskManager needs of a shared backend, and how transitions reach it.

A backend (``bgtasks.redis.RedisBackend``) mirrors the manager's tasks to a
store every worker shares, and answers for the tasks of every worker. The
manager only knows the :class:`TaskBackend` protocol below, so it never
imports a Redis client. Transitions reach the backend through a
:class:`MirrorLink`: sync, O(1), never awaiting, from any thread.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeAlias, runtime_checkable

from .records import TaskError, TaskRecord, TaskState

if TYPE_CHECKING:
    from .records import TaskInfo

__all__ = [
    "FieldValue",
    "Mirror",
    "MirrorLink",
    "ObservableBackend",
    "SharedChanges",
    "SharedStats",
    "TaskBackend",
    "final_fields",
]

FieldValue: TypeAlias = "str | int | float | bool | None"


class Mirror(Protocol):
    """The backend's sink for one worker's transitions (loop thread only).

    ``push`` may keep ``fields`` as it is: every caller passes a new dict.
    """

    def push(
        self,
        task_id: str,
        fields: dict[str, FieldValue],
        *,
        terminal: bool,
        progress_only: bool = False,
    ) -> None: ...


@runtime_checkable
class TaskBackend(Protocol):
    """What ``TaskManager(backend=...)`` takes; ``RedisBackend`` is one.

    ``open`` runs in the task that enters the manager, before its task group
    starts; ``close`` runs in that task once the group and the drain ended. Reads raise
    ``BackendUnavailableError`` when the store cannot answer.
    """

    async def open(self, on_cancel: Callable[[str], object]) -> Mirror: ...

    async def close(self) -> None: ...

    async def flush(self) -> None: ...

    async def get(self, task_id: str) -> TaskInfo | None: ...

    async def list(
        self, state: TaskState | None, limit: int, after: str | None
    ) -> tuple[list[TaskInfo], str | None]: ...

    def is_cursor(self, after: str) -> bool: ...

    async def request_cancel(self, task_id: str) -> bool | None: ...


@dataclass(frozen=True, slots=True)
class SharedStats:
    """Every worker's tasks counted per state, and the finished ones' run times.

    ``success_rate`` is succeeded / finished-but-not-cancelled; the durations
    are nearest-rank percentiles of ``finished_at - started_at`` in seconds.
    Each is None without data.
    """

    counts: dict[TaskState, int]
    success_rate: float | None
    duration_p50: float | None
    duration_p95: float | None


@dataclass(frozen=True, slots=True)
class SharedChanges:
    """Tasks other workers changed since ``position``'s predecessor.

    ``resync`` means some changes were missed: reload instead of patching.
    """

    tasks: list[TaskInfo]
    position: str
    resync: bool


@runtime_checkable
class ObservableBackend(Protocol):
    """What a backend may add for the dashboard: the view over every worker.

    ``RedisBackend`` is one. Both methods raise ``BackendUnavailableError``
    when the store cannot answer, and ``RuntimeError`` while the manager is
    not running.
    """

    async def stats(self) -> SharedStats: ...

    async def changes(self, after: str | None) -> SharedChanges: ...


class MirrorLink:
    """Hand transitions to the mirror on the loop thread, from any thread.

    A push from another thread (a sync endpoint's ``add_task``, a sync task's
    progress) is queued and handed over by one scheduled call; a push on the
    loop hands the queue over first, so the mirror sees each task's pushes in
    the order they were made.
    """

    __slots__ = ("_lock", "_queue", "loop_thread", "mirror", "schedule")

    def __init__(
        self,
        mirror: Mirror,
        loop_thread: int,
        schedule: Callable[[Callable[[], object]], object],
    ) -> None:
        self.mirror = mirror
        self.loop_thread = loop_thread
        self.schedule = schedule
        self._lock = threading.Lock()
        self._queue: list[tuple[str, dict[str, FieldValue], bool, bool]] = []

    def push(
        self,
        task_id: str,
        fields: dict[str, FieldValue],
        terminal: bool = False,
        progress_only: bool = False,
    ) -> None:
        """Queue ``fields`` of ``task_id`` for the mirror."""
        if threading.get_ident() == self.loop_thread:
            if self._queue:
                self.hand_over()
            self.mirror.push(
                task_id,
                fields,
                terminal=terminal,
                progress_only=progress_only,
            )
            return
        with self._lock:
            self._queue.append((task_id, fields, terminal, progress_only))
            first = len(self._queue) == 1
        if first:
            with contextlib.suppress(
                RuntimeError
            ):  # the loop is gone: nothing to mirror
                self.schedule(self.hand_over)

    def hand_over(self) -> None:
        """Give the queued pushes to the mirror (loop thread)."""
        with self._lock:
            queue, self._queue = self._queue, []
        push = self.mirror.push
        for task_id, fields, terminal, progress_only in queue:
            push(
                task_id,
                fields,
                terminal=terminal,
                progress_only=progress_only,
            )


def final_fields(record: TaskRecord) -> dict[str, FieldValue]:
    """Return the fields of a record that just reached its end (lock held)."""
    state = record.state
    outcome = record.outcome
    fields: dict[str, FieldValue] = {
        "state": state.value,
        "finished": record.finished,
        "cancel_requested": record.cancel_requested,
        "next_attempt_at": None,
    }
    if state is TaskState.SUCCEEDED:
        if outcome is None:  # most tasks return nothing: no encoder call
            fields["result"] = "null"
            return fields
        try:
            fields["result"] = json.dumps(outcome, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            fields["result_omitted"] = True  # not JSON: left out, as to_dict does
    elif state is TaskState.FAILED and isinstance(outcome, TaskError):
        fields["error_type"] = outcome.type
        fields["error_message"] = outcome.message
    elif outcome is not None:
        fields["reason"] = outcome
    return fields
