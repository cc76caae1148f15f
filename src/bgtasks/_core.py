"""The TaskManager's engine: state transitions, concurrency slots, execution.

Invariants, all guarded by one ``threading.Lock`` held only for short,
non-awaiting sections:

- a record leaves PENDING exactly once, under the lock, by whoever gets there
  first: its runner (-> RUNNING), ``cancel()`` or shutdown (-> CANCELLED);
- every change of ``state`` happens on the event loop thread, except the
  creation of a record submitted from a worker thread;
- ``_active`` counts PENDING and RUNNING records, so shutdown knows when the
  manager is idle;
- with ``max_concurrency``, ``_slots`` counts tasks that hold a slot and
  ``_queue`` keeps the others in submission order; a freed slot goes to the
  oldest still-PENDING record at once, so ``_slots < max`` implies no live
  record is queued.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

import anyio
from anyio.abc import TaskGroup

from ._context import running_task_var
from ._events import Subscribers, TaskEvent
from ._records import Call, Cancellable, TaskError, TaskInfo, TaskRecord, TaskState
from ._registry import Registry
from .exceptions import ManagerNotRunningError

__all__ = ["ManagerCore"]

logger = logging.getLogger("bgtasks")

# Longer error messages are cut, so a finished record's size stays bounded.
MAX_ERROR_MESSAGE = 2000

_PENDING = TaskState.PENDING
_RUNNING = TaskState.RUNNING


class _SlotWaiter:
    """An ``add_task`` wrapper waiting in the queue for a concurrency slot."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class ManagerCore:
    """State and execution shared by the public ``TaskManager`` methods."""

    # anyio >= 4.14 returns a cancellable handle from start_soon; tests turn
    # this off to run the fallback (a cancel scope per task) older anyio needs.
    _use_task_handles = hasattr(anyio, "TaskHandle")

    def __init__(
        self,
        *,
        max_concurrency: int | None,
        max_finished: int,
        finished_ttl: float | None,
        propagate_errors: bool,
        log_failures: bool,
        clock: Callable[[], float],
    ) -> None:
        self._registry = Registry(
            max_finished=max_finished, ttl=finished_ttl, clock=clock
        )
        self._lock = self._registry.lock
        self._subscribers = Subscribers()
        self._max_concurrency = max_concurrency
        self._propagate_errors = propagate_errors
        self._log_failures = log_failures
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._loop_thread: int | None = None
        self._active = 0
        self._idle: anyio.Event | None = None
        self._slots = 0
        self._queue: deque[TaskRecord] = deque()
        self._slot_waiters: dict[TaskRecord, _SlotWaiter] = {}
        self._waiters: dict[TaskRecord, anyio.Event] = {}

    # -- submission ---------------------------------------------------------

    def _register(
        self, call: Call, name: str, task_id: str | None, *, spawned: bool
    ) -> tuple[TaskRecord, bool]:
        """Create and store a PENDING record; tell sync subscribers.

        Returns the record and, for ``spawned`` ones, whether it got a slot and
        must be launched now (False: it waits in the queue).
        """
        created = time.time()
        with self._lock:
            if not self._accepting:
                raise _not_running()
            record = TaskRecord(
                self._registry.new_id() if task_id is None else task_id,
                name,
                created,
                call,
            )
            self._registry.add(record)
            self._active += 1
            launch = spawned
            if spawned and self._max_concurrency is not None:
                if self._slots < self._max_concurrency:
                    self._slots += 1
                else:
                    self._queue.append(record)
                    launch = False
            info = record.snapshot() if self._subscribers.sync else None
        if info is not None:
            self._subscribers.notify_sync([TaskEvent(record.id, None, _PENDING, info)])
        return record, launch

    def _launch(self, record: TaskRecord) -> None:
        """Start a spawned record's runner in the task group (loop thread only)."""
        tg = self._tg
        call = record.run
        if tg is None or not isinstance(call, tuple):
            # Cancelled (or the manager closed) before it could start.
            self._release_slot()
            return
        # start_soon copies the *current* context: run it inside the captured one.
        if self._max_concurrency is None and self._use_task_handles:
            handle = call[3].run(tg.start_soon, self._execute, record, call)
        else:
            handle = call[3].run(tg.start_soon, self._run_spawned, record, call)
        self._adopt(record, handle)

    def _adopt(self, record: TaskRecord, handle: object) -> None:
        """Cancel the task through anyio's own task handle.

        anyio >= 4.14 returns from ``start_soon`` a handle whose cancel scope
        wraps the task: reusing it saves a second scope per task (the costliest
        part of running one). With older anyio the runner opens its own scope.
        """
        # Still the call tuple: an eager task factory may have started it already.
        if self._use_task_handles and isinstance(record.run, tuple):
            record.run = cast("Cancellable", handle)

    def _release_slot(self) -> None:
        if self._max_concurrency is None:
            return
        with self._lock:
            self._slots -= 1
            launches, wakes = self._grant_slots()
        for record in launches:
            self._launch(record)
        for waiter in wakes:
            waiter.event.set()

    def _grant_slots(self) -> tuple[list[TaskRecord], list[_SlotWaiter]]:
        """Hand free slots to the oldest PENDING queued records (lock held)."""
        launches: list[TaskRecord] = []
        wakes: list[_SlotWaiter] = []
        limit = self._max_concurrency
        queue = self._queue
        while queue and limit is not None and self._slots < limit:
            record = queue.popleft()
            if record.state is not _PENDING:
                continue  # cancelled while it waited
            self._slots += 1
            waiter = self._slot_waiters.pop(record, None)
            if waiter is None:
                launches.append(record)
            else:
                waiter.granted = True
                wakes.append(waiter)
        return launches, wakes

    async def _acquire_external_slot(self, record: TaskRecord) -> bool:
        """Wait, in FIFO order, for a slot for an ``add_task`` record.

        Returns True if the slot is held and the task should run.
        """
        if self._max_concurrency is None:
            return True
        with self._lock:  # the caller saw it PENDING, with no await since
            if self._slots < self._max_concurrency:
                self._slots += 1
                return True
            waiter = _SlotWaiter()
            self._slot_waiters[record] = waiter
            self._queue.append(record)
        try:
            await waiter.event.wait()
        except BaseException:
            # The request's task was cancelled while it waited: never runs.
            with self._lock:
                self._slot_waiters.pop(record, None)
            if waiter.granted:
                self._release_slot()
            await self._cancel_pending(record)
            raise
        if waiter.granted and record.state is not _PENDING:
            self._release_slot()
            return False
        return waiter.granted

    # -- execution ----------------------------------------------------------

    async def _run_spawned(self, record: TaskRecord, call: Call) -> None:
        try:
            await self._execute_scoped(record, call)
        finally:
            self._release_slot()

    async def _execute_scoped(self, record: TaskRecord, call: Call) -> Exception | None:
        if self._use_task_handles:
            return await self._execute(record, call)
        with anyio.CancelScope() as scope:  # swallows its own cancellation
            with self._lock:
                if isinstance(record.run, tuple):  # not cancelled meanwhile
                    record.run = scope
            return await self._execute(record, call)
        return None

    async def _run_external(self, record: TaskRecord) -> None:
        """Run an ``add_task`` record in Starlette's request task."""
        call = record.run
        if not isinstance(call, tuple) or not await self._acquire_external_slot(record):
            return  # cancelled, or the manager closed, before Starlette ran it
        failure: list[Exception] = []
        try:
            # A child task, so the function runs in the context captured by
            # add_task and its own context changes stay out of the request's.
            async with anyio.create_task_group() as tg:
                handle = call[3].run(
                    tg.start_soon, self._execute_into, record, call, failure
                )
                self._adopt(record, handle)
        finally:
            self._release_slot()
        if failure and self._propagate_errors:
            raise failure[0]

    async def _execute_into(
        self, record: TaskRecord, call: Call, failure: list[Exception]
    ) -> None:
        error = await self._execute_scoped(record, call)
        if error is not None:
            failure.append(error)

    async def _execute(  # noqa: PLR0912 - the hot path, kept in one frame for speed
        self, record: TaskRecord, call: Call
    ) -> Exception | None:
        """Run a PENDING record to a terminal state; return its exception.

        Cancellation (and other BaseExceptions) is recorded, then re-raised.
        """
        subscribers = self._subscribers
        with self._lock:
            if record.state is not _PENDING:
                return None  # cancelled before it started: never runs
            created = record.snapshot() if subscribers.async_ else None
            record.state = _RUNNING
            record.started = time.time()
            info = record.snapshot() if subscribers.any else None
        running_task_var.set(record)
        func, args, kwargs, _, is_async = call
        try:
            if info is not None:
                await self._announce_start(record, created, info)
            if is_async:
                result = await func(*args, **kwargs)
            elif kwargs:
                result = await anyio.to_thread.run_sync(
                    functools.partial(func, *args, **kwargs)
                )
            else:
                result = await anyio.to_thread.run_sync(func, *args)
        except Exception as exc:
            event = self._finish(record, TaskState.FAILED, _error_of(exc))
            if self._log_failures:
                logger.exception(
                    "Task %s (%s) failed with %s",
                    record.name,
                    record.id,
                    type(exc).__qualname__,
                )
            if event is not None:
                await self._announce([event])
            return exc
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                event = self._finish(record, TaskState.CANCELLED, None)
            else:  # KeyboardInterrupt, SystemExit: record, then let it through
                event = self._finish(record, TaskState.FAILED, _error_of(exc))
            if event is not None:
                await self._announce([event])
            raise
        # Also when a cancel was requested but the function returned anyway.
        event = self._finish(record, TaskState.SUCCEEDED, result)
        if event is not None:
            await self._announce([event])
        return None

    async def _announce_start(
        self, record: TaskRecord, created: TaskInfo | None, info: TaskInfo
    ) -> None:
        """Tell subscribers a task started (async ones also of its creation)."""
        running = TaskEvent(record.id, _PENDING, _RUNNING, info)
        self._subscribers.notify_sync([running])
        if created is not None:
            await self._subscribers.notify_async(
                [TaskEvent(record.id, None, _PENDING, created), running]
            )

    # -- transitions --------------------------------------------------------

    def _finish(
        self, record: TaskRecord, state: TaskState, outcome: Any
    ) -> TaskEvent | None:
        """Move a RUNNING record to ``state``; return the event to announce."""
        now = time.time()
        mono = self._registry.clock()
        with self._lock:
            return self._end(record, state, outcome, now, mono)

    def _end(
        self,
        record: TaskRecord,
        state: TaskState,
        outcome: Any,
        now: float,
        mono: float,
    ) -> TaskEvent | None:
        """Record a terminal state (lock held); return the event if anyone listens."""
        old = record.state
        record.state = state
        record.outcome = outcome
        record.finished = now
        record.finished_mono = mono
        record.run = None
        self._active -= 1
        self._registry.finished(record)
        if self._waiters:
            waiter = self._waiters.pop(record, None)
            if waiter is not None:
                waiter.set()
        if self._active == 0 and self._idle is not None:
            self._idle.set()
        if self._subscribers.any:
            return TaskEvent(record.id, old, state, record.snapshot())
        return None

    def _end_pending(
        self, record: TaskRecord, now: float, mono: float
    ) -> list[TaskEvent]:
        """Cancel a PENDING record that never ran (lock held); return its events."""
        record.cancel_requested = True
        created = record.snapshot() if self._subscribers.async_ else None
        event = self._end(record, TaskState.CANCELLED, None, now, mono)
        waiter = self._slot_waiters.pop(record, None)
        if waiter is not None:
            waiter.event.set()  # wake its add_task wrapper, which then returns
        if event is None:
            return []
        if created is None:
            return [event]
        return [TaskEvent(record.id, None, _PENDING, created), event]

    async def _cancel_pending(self, record: TaskRecord) -> None:
        now = time.time()
        mono = self._registry.clock()
        with self._lock:
            if record.state is not _PENDING:  # pragma: no cover - shutdown won a race
                return
            events = self._end_pending(record, now, mono)
        await self._announce(events)

    async def _announce(self, events: list[TaskEvent]) -> None:
        """Deliver the events of a task that ended (shielded for async ones).

        A creation event (old state None) only goes to async subscribers: sync
        ones got it at submission.
        """
        if events:
            self._subscribers.notify_sync(
                [e for e in events if e.old_state is not None]
            )
            if self._subscribers.async_:
                await self._subscribers.notify_async(events, shielded=True)


def _error_of(exc: BaseException) -> TaskError:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not hide the failure itself
        message = f"<unprintable {type(exc).__qualname__}>"
    if len(message) > MAX_ERROR_MESSAGE:  # records stay small whatever the error
        message = message[: MAX_ERROR_MESSAGE - 1] + "\u2026"
    return TaskError(type(exc).__qualname__, message)


def _not_running() -> ManagerNotRunningError:
    return ManagerNotRunningError(
        "the TaskManager is not running: enter it first (`async with manager:`, "
        "e.g. in the app's lifespan); it stops accepting tasks once it closes."
    )
