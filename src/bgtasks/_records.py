"""What the TaskManager knows about a task: states, snapshots and handles.

A task lives as a slotted, mutable ``TaskRecord`` inside the manager; readers only
ever see :class:`TaskInfo`, an immutable snapshot built under the manager's
lock. A finished record keeps the id, name, state, times, outcome and progress:
nothing that would keep the task's arguments, coroutine, frames or traceback
alive.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from contextvars import Context

    from ._manager import TaskManager

__all__ = [
    "MAX_ERROR_MESSAGE",
    "Call",
    "Cancellable",
    "TaskError",
    "TaskHandle",
    "TaskInfo",
    "TaskRecord",
    "TaskState",
    "error_of",
]

# Longer error messages are cut, so a finished record's size stays bounded.
MAX_ERROR_MESSAGE = 2000


class TaskState(str, enum.Enum):
    """Where a task is in its life; the last three are terminal."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_finished(self) -> bool:
        """True for ``SUCCEEDED``, ``FAILED`` and ``CANCELLED``."""
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


@dataclass(frozen=True, slots=True)
class TaskError:
    """Why a task failed, without the exception object or its traceback.

    Attributes:
        type: the exception type's qualified name, e.g. ``"ConnectionError"``.
        message: ``str(exc)``.
    """

    type: str
    message: str


def error_of(exc: BaseException) -> TaskError:
    """Describe a failure by type name and (bounded) message, not the exception."""
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the failure itself
        message = f"<unprintable {type(exc).__qualname__}>"
    if len(message) > MAX_ERROR_MESSAGE:  # records stay small whatever the error
        message = message[: MAX_ERROR_MESSAGE - 1] + "\u2026"
    return TaskError(type(exc).__qualname__, message)


@dataclass(frozen=True, slots=True)
class TaskInfo:
    """An immutable snapshot of one task, as ``TaskManager.get`` returns it.

    Attributes:
        id: the task's id.
        name: the task function's ``__qualname__``.
        state: the task's state when the snapshot was taken.
        created_at: when the task was submitted (timezone-aware UTC).
        started_at: when it started running, or None.
        finished_at: when it reached a terminal state, or None.
        result: the return value on success, else None.
        error: type name and message on failure, else None.
        progress: the last fraction reported with ``set_progress`` (0.0 to 1.0).
        message: the last progress message.
        attempt: 1, or the attempt ``bgtasks.retry`` reported.
        cancel_requested: a cancel was asked for (the task may still be running).
    """

    id: str
    name: str
    state: TaskState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: Any
    error: TaskError | None
    progress: float | None
    message: str | None
    attempt: int
    cancel_requested: bool

    def to_dict(self, *, include_error_message: bool = True) -> dict[str, Any]:
        """Return a JSON-serializable dict of this snapshot.

        Times are ISO 8601 strings, the state is its value, the error is
        ``{"type": ..., "message": ...}``. The ``"result"`` key is present only
        when the result is JSON-serializable (strict JSON: no NaN).

        Args:
            include_error_message: False replaces the error message with None,
                for APIs that must not reveal what went wrong.
        """
        error = self.error
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "created_at": self.created_at.isoformat(),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "error": None
            if error is None
            else {
                "type": error.type,
                "message": error.message if include_error_message else None,
            },
            "progress": self.progress,
            "message": self.message,
            "attempt": self.attempt,
            "cancel_requested": self.cancel_requested,
        }
        try:
            json.dumps(self.result, allow_nan=False)
        except (TypeError, ValueError, RecursionError):
            pass  # not JSON: leave the key out rather than fail the whole dict
        else:
            data["result"] = self.result
        return data


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


class TaskHandle:
    """What ``spawn`` and ``add_task`` return: the task's id, and shortcuts.

    The handle follows the task it was created for, even after retention
    dropped its record from the manager (``info()`` then returns None).
    """

    __slots__ = ("_manager", "_record")

    def __init__(self, manager: TaskManager, record: TaskRecord) -> None:
        self._manager = manager
        self._record = record

    @property
    def id(self) -> str:
        """The task's id, for ``manager.get``, ``cancel``, ``wait`` and URLs."""
        return self._record.id

    def info(self) -> TaskInfo | None:
        """Return a snapshot of the task, or None once retention dropped it."""
        return self._manager._info_of(self._record)  # pyright: ignore[reportPrivateUsage]

    async def wait(self, *, timeout: float | None = None) -> TaskInfo:
        """Wait until the task is finished and return its final snapshot.

        Raises:
            TimeoutError: the task did not finish within ``timeout`` seconds.
        """
        return await self._manager._wait_record(self._record, timeout)  # pyright: ignore[reportPrivateUsage]

    async def cancel(self) -> bool:
        """Ask the task to stop; False if it had already finished."""
        return await self._manager._cancel_record(self._record)  # pyright: ignore[reportPrivateUsage]

    def __repr__(self) -> str:
        return f"<TaskHandle id={self._record.id!r} name={self._record.name!r}>"


# What a record needs to start the task later: function, args, kwargs (None if
# empty), the context captured at submission, and whether to await it.
Call = tuple[
    Callable[..., Any], tuple[Any, ...], "dict[str, Any] | None", "Context", bool
]


class Cancellable(Protocol):
    """A running task's cancel switch: its cancel scope or anyio task handle."""

    def cancel(self) -> None: ...


class TaskRecord:
    """The manager's mutable bookkeeping for one task (private, lock-guarded).

    It is also what ``running_task_var`` holds while the task runs (it has the
    ``id`` and ``record_attempt`` that decorators use); ``current_task()``
    wraps it in a ``TaskContext``. ``run`` holds the call while a PENDING task
    waits to be launched (None if it is launched at once, in the submitter's
    context), what cancels the task (its anyio task handle or cancel scope)
    once launched, and None once finished; ``outcome`` is the result (SUCCEEDED) or the
    TaskError (FAILED). Times are ``time.time()`` floats; ``finished_mono`` is
    the manager clock's reading at the end, for age-based retention.
    """

    __slots__ = (
        "attempt",
        "cancel_requested",
        "created",
        "finished",
        "finished_mono",
        "id",
        "name",
        "outcome",
        "progress",
        "run",
        "started",
        "state",
    )

    def __init__(
        self, task_id: str, name: str, created: float, call: Call | None
    ) -> None:
        self.id = task_id
        self.name = name
        self.state = TaskState.PENDING
        self.created = created
        self.started: float | None = None
        self.finished: float | None = None
        self.finished_mono = 0.0
        self.outcome: Any = None
        # (fraction, message): one tuple, so a worker thread swaps both at once.
        self.progress: tuple[float, str | None] | None = None
        self.attempt = 1
        self.cancel_requested = False
        self.run: Call | Cancellable | None = call

    def record_attempt(self, attempt: int) -> None:
        """Record the attempt ``bgtasks.retry`` is starting (RunningTask API)."""
        if not self.state.is_finished:
            self.attempt = attempt

    def snapshot(self) -> TaskInfo:
        """Build the immutable view; call it with the manager's lock held."""
        state = self.state
        outcome = self.outcome
        progress, message = self.progress or (None, None)
        return TaskInfo(
            id=self.id,
            name=self.name,
            state=state,
            created_at=datetime.fromtimestamp(self.created, timezone.utc),
            started_at=None
            if self.started is None
            else datetime.fromtimestamp(self.started, timezone.utc),
            finished_at=None
            if self.finished is None
            else datetime.fromtimestamp(self.finished, timezone.utc),
            result=outcome if state is TaskState.SUCCEEDED else None,
            error=outcome if state is TaskState.FAILED else None,
            progress=progress,
            message=message,
            attempt=self.attempt,
            cancel_requested=self.cancel_requested,
        )
