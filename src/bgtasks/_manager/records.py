"""What the TaskManager knows about a task: states, snapshots and handles.

A task lives as a slotted, mutable ``TaskRecord`` inside the manager while it is
active; readers only ever see :class:`TaskInfo`, an immutable snapshot built
under the manager's lock. When the task ends, retention keeps it as a
``Finished`` tuple instead: the id, name, state, times, outcome and progress,
all atoms (str, float, int, bool, None) but the result. CPython's collector
untracks such a tuple at its first pass, so a million kept records cost it
nothing, where a million records (slotted objects pointing back at the engine)
made every full collection walk them all. Nothing finished keeps the task's
arguments, coroutine, frames or traceback alive.
"""

from __future__ import annotations

import collections.abc
import enum
import json
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from typing import TYPE_CHECKING, Any, Final, Generic, Protocol

from typing_extensions import TypeVar

from .._context import RETRY_MARKER
from .._wrap import unwrap_partial

if TYPE_CHECKING:
    from contextvars import Context

    from .engine import Engine

__all__ = [
    "MAX_ERROR_MESSAGE",
    "RESPONSE_NOT_SENT",
    "SYNC",
    "Cancellable",
    "Entry",
    "Finished",
    "RecordView",
    "TaskError",
    "TaskInfo",
    "TaskRecord",
    "TaskState",
    "error_of",
    "info_of_entry",
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


class _Coded:
    """Where a snapshot made by the manager keeps its fields until they are read.

    ``TaskInfo``'s fields are slots; one that the manager's snapshot left
    unset is decoded from ``_coded`` (a ``Finished`` tuple) on first read
    (``TaskInfo.__getattr__``), then read like any slot. Taking a snapshot
    is then two stores, whatever is read of it later.
    """

    __slots__ = ("_coded",)


@dataclass(frozen=True, slots=True)
class TaskInfo(_Coded, Generic[T_co]):
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

    if not TYPE_CHECKING:  # typed as absent, so a misspelt attribute stays an error

        def __getattr__(self, name: str) -> object:
            # Only reached for an unset slot: a field of a coded snapshot.
            decode = _DECODE.get(name)
            if decode is not None:
                try:
                    coded = object.__getattribute__(self, "_coded")
                except AttributeError:
                    pass
                else:
                    value = decode(coded)
                    object.__setattr__(self, name, value)  # decoded once
                    return value
            raise AttributeError(
                f"{type(self).__name__!r} object has no attribute {name!r}"
            )

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


# A task's fields as plain values, in this order: what retention keeps of a
# finished task (see the module docstring), and what a snapshot decodes. The
# outcome is the result (SUCCEEDED), the error's type name, with its message
# as the detail (FAILED), or the cancel reason (CANCELLED); times are
# time.time() floats; the state is its value. Each slot costs every kept
# record 8 bytes (a retry time or a sequence number, an int or float object
# each, would cost 32 more: a finished task waits for no retry, and the
# registry keeps sequence numbers in an array).
Finished = tuple[
    str,  # id
    str,  # name
    str,  # state value
    float,  # created
    float | None,  # started
    float | None,  # finished
    Any,  # outcome
    str | None,  # detail
    float | None,  # progress fraction
    str | None,  # progress message
    int,  # attempt
    bool,  # cancel requested
    float | None,  # next attempt at (retry's wait): None once finished
]
ID: Final = 0
STATE: Final = 2

_STATES = {state.value: state for state in TaskState}


def _when(stamp: float | None) -> datetime | None:
    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc)


def _result(coded: Finished) -> object:
    return coded[6] if coded[2] == "succeeded" else None


def _error(coded: Finished) -> TaskError | None:
    return TaskError(coded[6], coded[7] or "") if coded[2] == "failed" else None


def _reason(coded: Finished) -> object:
    return coded[6] if coded[2] == "cancelled" else None


# How each TaskInfo field is read from a Finished tuple.
_DECODE: dict[str, Callable[[Finished], object]] = {
    "id": itemgetter(0),
    "name": itemgetter(1),
    "state": lambda coded: _STATES[coded[2]],
    "created_at": lambda coded: datetime.fromtimestamp(coded[3], timezone.utc),
    "started_at": lambda coded: _when(coded[4]),
    "finished_at": lambda coded: _when(coded[5]),
    "result": _result,
    "error": _error,
    "progress": itemgetter(8),
    "message": itemgetter(9),
    "attempt": itemgetter(10),
    "cancel_requested": itemgetter(11),
    "cancel_reason": _reason,
    "next_attempt_at": lambda coded: _when(coded[12]),
}

_new_info = object.__new__
_set = object.__setattr__


def info_of_entry(entry: Entry) -> TaskInfo:
    """Snapshot what the registry stores: an active record or a finished tuple."""
    if isinstance(entry, TaskRecord):
        return entry.snapshot()
    return _coded_info(entry)


def _coded_info(coded: Finished) -> TaskInfo:
    info: TaskInfo = _new_info(TaskInfo)
    _set(info, "_coded", coded)  # each field is decoded when first read
    return info


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
        "info",
        "kwargs",
        "name",
        "outcome",
        "owner",
        "progress",
        "retry_at",
        "run",
        "seq",
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
        # The registry's sequence number, set when it stores the record.
        self.seq = 0
        # The final snapshot, built once when first asked for after the end.
        self.info: TaskInfo | None = None

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

    def owns_retry(self, func: object) -> bool:
        """Whether the retry layer around ``func`` is the task's (RunningTask API).

        It is if the task's function is marked as wrapping ``func`` (its own
        outermost retry layer). Looked up when asked, not per task: few tasks
        retry, and the function is held until the task ends.
        """
        own = self.func
        if own is None:
            return False  # ended: nothing left to report attempts for
        return func is getattr(unwrap_partial(own), RETRY_MARKER, None) is not None

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
        info = self.info
        if info is None:
            info = _coded_info(self.entry())
            if self.state in _FINISHED:  # it never changes again: keep it
                self.info = info
        return info

    def entry(self) -> Finished:
        """Return the record's fields as a ``Finished`` tuple (lock held)."""
        state = self.state
        outcome = self.outcome
        detail = None
        if state is TaskState.FAILED:
            error: TaskError = outcome
            outcome, detail = error.type, error.message
        fraction, message = self.progress or (None, None)
        return (
            self.id,
            self.name,
            state._value_,  # the same str; .value is a Python-level property
            self.created,
            self.started,
            self.finished,
            outcome,
            detail,
            fraction,
            message,
            self.attempt,
            self.cancel_requested,
            # A finished task waits for nothing (retry may not have cleared it).
            None if state in _FINISHED else self.retry_at,
        )


# What the registry stores under an id: the record while the task is active,
# then its Finished tuple.
Entry = TaskRecord | Finished
