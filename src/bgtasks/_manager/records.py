"""What the TaskManager knows about a task: states, snapshots and handles.

A task lives as a slotted, mutable ``TaskRecord`` inside the manager; readers only
ever see :class:`TaskInfo`, an immutable snapshot built under the manager's
lock. A finished record keeps the id, name, state, times, outcome and progress:
nothing that would keep the task's arguments, coroutine, frames or traceback
alive.
"""

from __future__ import annotations

import collections.abc
import enum
import json
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Generic, Protocol

from typing_extensions import TypeVar

if TYPE_CHECKING:
    from contextvars import Context

    from .engine import Engine

__all__ = [
    "MAX_ERROR_MESSAGE",
    "RESPONSE_NOT_SENT",
    "SYNC",
    "Cancellable",
    "RecordView",
    "TaskError",
    "TaskInfo",
    "TaskRecord",
    "TaskState",
    "error_of",
]

# What a task returns: TaskInfo[T].result is a T (or None); unknown: Any.
T_co = TypeVar("T_co", covariant=True, default=Any)

# Longer error messages are cut, so a finished record's size stays bounded.
MAX_ERROR_MESSAGE = 2000

# The cancel reason of an ``add_task`` task whose request never ran it.
RESPONSE_NOT_SENT = "response not sent"

_NOT_DRIVEN = (
    "a TaskRecord runs when awaited (as anyio's task handle does); it cannot "
    "be driven with send() or throw()."
)


class TaskState(str, enum.Enum):
    """Where a task is in its life; all but PENDING and RUNNING are terminal.

    ``INTERRUPTED`` is only ever seen with a shared backend (``TaskManager(
    backend=...)``): the worker running the task stopped heartbeating
    (crashed, killed, partitioned) before the task ended.
    """

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_finished(self) -> bool:
        """True for ``SUCCEEDED``, ``FAILED``, ``CANCELLED`` and ``INTERRUPTED``."""
        return self in _FINISHED

    def __str__(self) -> str:
        return self.value


_FINISHED = frozenset(
    {
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.CANCELLED,
        TaskState.INTERRUPTED,
    }
)


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
class TaskInfo(Generic[T_co]):
    """An immutable snapshot of one task, as ``TaskManager.get`` returns it.

    Generic in the task's return type: a ``TaskHandle[T]`` gives
    ``TaskInfo[T]``, whose ``result`` is a ``T`` or None (``TaskInfo`` alone
    is ``TaskInfo[Any]``).

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
        cancel_reason: why bgtasks cancelled a CANCELLED task on its own, else
            None: ``"response not sent"`` for an ``add_task`` task whose
            request ended without running its background tasks (the endpoint
            raised, the response went out without them, the client was gone);
            ``"worker lost"`` for an INTERRUPTED task.
        next_attempt_at: while ``bgtasks.retry`` waits between attempts, when
            the next one starts (timezone-aware UTC); else None.
    """

    id: str
    name: str
    state: TaskState
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: T_co | None
    error: TaskError | None
    progress: float | None
    message: str | None
    attempt: int
    cancel_requested: bool
    cancel_reason: str | None = None
    next_attempt_at: datetime | None = None

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
            "cancel_reason": self.cancel_reason,
            "next_attempt_at": _iso(self.next_attempt_at),
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


class RecordView:
    """The base of the public objects that show one task's record.

    ``TaskHandle`` (what a submitter holds) and ``TaskContext`` (what the
    running task sees) share its id, its repr and the way they hold the record.
    """

    __slots__ = ("_record",)

    def __init__(self, record: TaskRecord) -> None:
        self._record = record

    @property
    def id(self) -> str:
        """The task's id, for ``manager.get``, ``cancel``, ``wait`` and URLs."""
        return self._record.id

    def __repr__(self) -> str:
        record = self._record
        return f"<{type(self).__name__} id={record.id!r} name={record.name!r}>"


class Cancellable(Protocol):
    """A running task's cancel switch: its cancel scope or anyio task handle."""

    def cancel(self) -> None: ...


# The ``owner`` of a call that runs in a worker thread (see TaskRecord).
SYNC: object = object()


class TaskRecord(collections.abc.Coroutine[Any, Any, object]):
    """The manager's mutable bookkeeping for one task (private, lock-guarded).

    It is also what ``running_task_var`` holds while the task runs (it has the
    ``id`` and ``record_attempt`` that decorators use); ``current_task()``
    wraps it in a ``TaskContext``.

    Until it ends, the record holds the call to make: ``func``, ``args``,
    ``kwargs`` (None if empty) and ``owner`` (None: await ``func(...)``;
    ``SYNC``: call it in a worker thread; anything else: a method's object, to
    pass first, kept apart so no bound method object lives per pending task).
    ``run`` holds the context captured at submission while a PENDING task
    waits to be launched (None if it is launched at once, in the submitter's
    context), then what cancels the task (its anyio task handle or cancel
    scope), and None once finished. ``outcome`` is the result (SUCCEEDED),
    the TaskError (FAILED) or the cancel reason, if any (CANCELLED). Times
    are ``time.time()`` floats.

    The record is itself the coroutine the manager hands to anyio's
    ``create_task``: awaiting it runs the call through its ``engine``. A
    pending task is then one object fewer for the garbage collector to walk
    than a record plus a coroutine, which is what kept the manager below
    0.8x of a raw task group's throughput on trio (docs/performance.md). It
    is only ever awaited (anyio's task handle awaits what it is given); it
    refuses ``send`` and ``throw``.
    """

    __slots__ = (
        "args",
        "attempt",
        "cancel_requested",
        "created",
        "engine",
        "finished",
        "func",
        "id",
        "kwargs",
        "name",
        "outcome",
        "owner",
        "progress",
        "retry_at",
        "run",
        "started",
        "state",
    )

    def __init__(  # noqa: PLR0917 - the call's parts: no tuple kept per task
        self,
        engine: Engine,
        task_id: str,
        name: str,
        created: float,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None,
        owner: object,
    ) -> None:
        self.engine = engine
        self.id = task_id
        self.name = name
        self.state = TaskState.PENDING
        self.created = created
        self.started: float | None = None
        self.finished: float | None = None
        self.outcome: Any = None
        # (fraction, message): one tuple, so a worker thread swaps both at once.
        self.progress: tuple[float, str | None] | None = None
        self.attempt = 1
        # When retry's next attempt starts, while it waits (time.time()).
        self.retry_at: float | None = None
        self.cancel_requested = False
        self.func: Callable[..., Any] | None = func
        self.args: tuple[Any, ...] = args
        self.kwargs: dict[str, Any] | None = kwargs
        self.owner: object = owner
        self.run: Context | Cancellable | None = None

    def __await__(self) -> Generator[Any, None, object]:
        """Run the task through the manager (anyio's task handle awaits this)."""
        return self.engine.run_launched(self).__await__()

    def send(self, value: object) -> Any:
        """Refused: a record is awaited, never driven step by step."""
        raise TypeError(_NOT_DRIVEN)

    def throw(self, *args: object, **kwargs: object) -> Any:
        """Refused: a record is awaited, never driven step by step."""
        raise TypeError(_NOT_DRIVEN)

    def close(self) -> None:
        """Do nothing: the call has not started, and the manager ends the record.

        anyio closes a coroutine it is given but cannot start.
        """

    def record_attempt(self, attempt: int) -> None:
        """Record the attempt ``bgtasks.retry`` is starting (RunningTask API)."""
        if not self.state.is_finished:
            self.attempt = attempt
            self.retry_at = None
            link = self.engine.link
            if link is not None:
                link.push(self.id, {"attempt": attempt, "next_attempt_at": None})

    def record_retry_wait(self, until: float) -> None:
        """Record that ``bgtasks.retry`` waits until ``until`` (RunningTask API).

        ``until`` is a ``time.time()`` timestamp: when the next attempt starts.
        """
        if not self.state.is_finished:
            self.retry_at = until
            link = self.engine.link
            if link is not None:
                link.push(self.id, {"next_attempt_at": until})

    def snapshot(self) -> TaskInfo:
        """Build the immutable view; call it with the manager's lock held."""
        state = self.state
        outcome = self.outcome
        progress, message = self.progress or (None, None)
        retry_at = self.retry_at
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
            cancel_reason=outcome if state is TaskState.CANCELLED else None,
            # A finished task waits for nothing (retry may not have cleared it).
            next_attempt_at=None
            if retry_at is None or state.is_finished
            else datetime.fromtimestamp(retry_at, timezone.utc),
        )
