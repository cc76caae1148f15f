"""The TaskManager's engine: registration, launch, execution, state transitions.

``TaskManager`` holds one ``Engine`` and adds the public API (argument checks,
types, docs); ``TaskHandle`` and ``TaskContext`` reach the engine through the
record they show. The engine's public names are that package-internal
interface.

Invariants, all guarded by one ``threading.Lock`` held only for short,
non-awaiting sections:

- a record leaves PENDING exactly once, under the lock, by whoever gets there
  first: its runner (-> RUNNING), ``cancel()`` or shutdown (-> CANCELLED);
- every change of ``state`` happens on the event loop thread, except the
  creation of a record submitted from a worker thread;
- ``active`` counts PENDING and RUNNING records, so shutdown knows when the
  manager is idle;
- with ``max_concurrency``, ``slots`` hands out run slots in submission
  order (see ``slots.py``).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from .. import _observe
from .._context import running_task_var
from .._wrap import unwrap_partial
from ..exceptions import ManagerNotRunningError
from .backend import MirrorLink, TaskBackend, final_fields
from .background import in_context
from .events import Subscribers, TaskEvent
from .records import (
    RESPONSE_NOT_SENT,
    SYNC,
    Cancellable,
    TaskInfo,
    TaskRecord,
    TaskState,
    error_of,
)
from .registry import Registry, check_task_id
from .slots import Slots, SlotWaiter
from .submit import current_library, resolve

if TYPE_CHECKING:
    from anyio.lowlevel import EventLoopToken

__all__ = ["Engine"]

logger = logging.getLogger("bgtasks")

_PENDING = TaskState.PENDING
_RUNNING = TaskState.RUNNING


class Engine:
    """What a ``TaskManager`` runs on: its records, task group, slots, subscribers.

    Package-internal: ``TaskManager``, ``TaskHandle`` and ``TaskContext`` use
    its public names; its underscored names are its own.
    """

    # anyio >= 4.14 returns a cancellable handle from create_task/start_soon;
    # tests turn this off to run the fallback (a cancel scope per task) that
    # older anyio needs.
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
        backend: TaskBackend | None = None,
    ) -> None:
        self.registry = Registry(
            max_finished=max_finished, ttl=finished_ttl, clock=clock
        )
        self.lock = self.registry.lock
        self.subscribers = Subscribers()
        self.slots = None if max_concurrency is None else Slots(max_concurrency)
        self._propagate_errors = propagate_errors
        self._log_failures = log_failures
        self.tg: TaskGroup | None = None
        self.accepting = False
        self.loop_thread: int | None = None
        self.token: EventLoopToken | None = None
        self.library: str | None = None
        # The running backend's CancelScope class, called directly:
        # anyio.CancelScope() looks the backend up (sniffio) for every scope.
        self._new_scope: Callable[[], anyio.CancelScope] = anyio.CancelScope
        self._owner: object = None  # the anyio task that opened the engine
        # Thread-safe, non-blocking "call soon on the manager's loop", while
        # the manager runs (see abandon_soon).
        self.schedule: Callable[[Callable[[], object]], object] | None = None
        self.active = 0
        self._idle: anyio.Event | None = None
        self._waiters: dict[TaskRecord, anyio.Event] = {}
        # What awaiting a launched record runs (TaskRecord.__await__): chosen
        # once, as it is looked up for every task.
        self.run_launched: Callable[[TaskRecord], Coroutine[Any, Any, object]] = (
            self._execute if self.slots is None else self._run_spawned
        )
        self.backend = backend
        # Where transitions go while a backend is open; None: no cost at all.
        self.link: MirrorLink | None = None

    # -- lifecycle ----------------------------------------------------------

    async def open(self) -> None:
        """Start the task group and accept tasks (``async with manager``).

        Raises:
            RuntimeError: the manager is already running.
        """
        if self.tg is not None:
            raise RuntimeError(
                "this TaskManager is already running: enter it once (one "
                "`async with manager:` at a time), or create another manager."
            )
        # Opened first and closed last, so its scopes nest around the group's.
        mirror = (
            None if self.backend is None else await self.backend.open(self._cancel_soon)
        )
        tg = anyio.create_task_group()
        self.tg = tg
        try:
            await tg.__aenter__()
        except BaseException:  # pragma: no cover - anyio failing to start a group
            self.tg = None
            if self.backend is not None:
                await self.backend.close()
            raise
        self._owner = anyio.get_current_task().id
        self.loop_thread = threading.get_ident()
        self.token = anyio.lowlevel.current_token()
        self.schedule = _loop_scheduler(self.token)
        self.library = current_library()
        self._new_scope = type(anyio.CancelScope())
        if mirror is not None:
            self.link = MirrorLink(mirror, self.loop_thread, self.schedule)
        with self.lock:
            self.accepting = True

    async def close(self, drain: float) -> None:
        """Stop accepting, drain for ``drain`` seconds, cancel the rest, wait."""
        tg = self.tg
        if tg is None:
            return  # never entered, or already closed
        if anyio.get_current_task().id != self._owner:
            raise RuntimeError(
                "close the TaskManager from the task that entered it (anyio task "
                "groups require it): leave its `async with` block, or call "
                "aclose() where it was entered, e.g. at the end of the lifespan."
            )
        self._owner = None
        with self.lock:
            self.accepting = False
            idle = self._idle = anyio.Event() if self.active else None
            # Waiting with its captured context: maybe an add_task record
            # whose wrapper a dropped request holds in a reference cycle.
            unrun = idle is not None and any(
                record.state is _PENDING and isinstance(record.run, Context)
                for record in self.registry.active()
            )
        if unrun:
            # Such a wrapper can never run: collect it, so its finalizer ends
            # its record now instead of after the whole drain.
            gc.collect()
        interrupted: BaseException | None = None
        try:
            if idle is not None and drain > 0:
                with anyio.move_on_after(drain):
                    await idle.wait()
        except BaseException as error:  # cancelled while draining: still clean up
            interrupted = error
        await self._cancel_all()
        tg.cancel_scope.cancel()
        try:
            # Not handed the body's exception: it propagates as is, not grouped.
            await tg.__aexit__(None, None, None)
        finally:
            self.tg = None
            self.loop_thread = None
            self.schedule = None
            try:
                with anyio.CancelScope(shield=True):
                    await self._wait_idle()
            finally:
                # Not under the shield: the backend's scopes enclose it.
                if self.backend is not None:
                    await self._close_backend(self.backend)
            self._idle = None
        if interrupted is not None:  # pragma: no cover - the group re-raised it first
            raise interrupted

    async def _close_backend(self, backend: TaskBackend) -> None:
        """Hand the last transitions over and close the backend (after the drain)."""
        link, self.link = self.link, None
        if link is not None:
            link.hand_over()
        await backend.close()

    def _cancel_soon(self, task_id: str) -> None:
        """Cancel a task another worker asked to cancel (the mirror calls it)."""
        with self.lock:
            record = self.registry.get(task_id)
        tg = self.tg
        # A finished task is stored as a tuple: only a record can be cancelled.
        if isinstance(record, TaskRecord) and tg is not None:
            tg.start_soon(self.cancel_record, record)

    async def _wait_idle(self) -> None:
        """Wait for ``add_task`` tasks still running in request tasks."""
        with self.lock:
            idle = self._idle = anyio.Event() if self.active else None
        if idle is not None:
            await idle.wait()

    # -- submission ---------------------------------------------------------

    def new_record(
        self,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        task_id: str | None,
        method: str,
    ) -> TaskRecord:
        """Check a submission and make its PENDING record (not stored yet).

        Raises:
            TypeError: ``func`` is not a function the manager can run.
            ValueError: ``task_id`` is malformed.
        """
        name, target, owner = resolve(func, method)
        if task_id is not None:
            check_task_id(task_id)
        # An empty id has _register draw a random one.
        return TaskRecord(
            self, task_id or "", name, time.time(), target, args, kwargs or None, owner
        )

    def register(self, record: TaskRecord, *, spawned: bool) -> bool:
        """Store a new PENDING record; tell sync subscribers.

        A record whose ``id`` is empty gets a random one. Returns, for
        ``spawned`` records, whether it got a slot and must be launched now
        (False: it waits in the queue).
        """
        lock = self.lock
        lock.acquire()  # not `with`: on the per-task path it costs twice as much
        try:
            if not self.accepting:
                raise not_running()
            if record.id:
                self.registry.add(record)
            else:
                self.registry.add_with_new_id(record)
            self.active += 1
            link = self.link
            if link is not None:
                link.push(
                    record.id,
                    {
                        "name": record.name,
                        "created": record.created,
                        "state": "pending",
                    },
                )
            launch = spawned
            slots = self.slots
            if spawned and slots is not None and not slots.take():
                slots.enqueue(record)
                launch = False
            info = record.snapshot() if self.subscribers.sync else None
        finally:
            lock.release()
        if info is not None:
            self.subscribers.notify_sync([TaskEvent(record.id, None, _PENDING, info)])
        if _observe.hook is not None:
            _observe.hook.task_submitted(record)
        return launch

    def launch(self, record: TaskRecord) -> None:
        """Start a spawned record that waited for a slot or the loop (loop only)."""
        context = record.run
        if self.tg is None or not isinstance(context, Context):
            # Cancelled (or the manager closed) before it could start.
            self._release_slot()
            return
        self.start(record, context)

    def start(self, record: TaskRecord, context: Context | None) -> None:
        """Run a record in the task group (loop thread only).

        ``context``: the one captured at submission; None when submitted on the
        loop just now, as the task group copies the current context itself.
        """
        tg = self.tg
        assert tg is not None  # the callers check; cheaper than cast()
        if self._use_task_handles:
            # The record is the coroutine (see TaskRecord), and anyio's handle
            # wraps it in a cancel scope: reusing that saves a second scope per
            # task (the costliest part of running one).
            handle = tg.create_task(record, name=record.name, context=context)
            if record.finished is None:  # pragma: no branch - ended by an eager start
                record.run = handle
        elif context is None:
            tg.start_soon(self._run_spawned, record)
        else:
            context.run(tg.start_soon, self._run_spawned, record)

    def _release_slot(self) -> None:
        slots = self.slots
        if slots is None:
            return
        with self.lock:
            launches, wakes = slots.release()
        for record in launches:
            self.launch(record)
        for event in wakes:
            event.set()

    # -- add_task: tracked tasks that Starlette's BackgroundTasks runs -------
    #
    # Such a task runs in the request's own task, after the response, not in
    # the task group: the task handed to Starlette waits for a concurrency
    # slot, then runs the function in the context captured by add_task.

    async def run_external(self, record: TaskRecord) -> None:
        """Run an ``add_task`` record in Starlette's request task."""
        context = record.run
        if not isinstance(context, Context) or (
            self.slots is not None and not await self._acquire_external_slot(record)
        ):
            return  # cancelled, or the manager closed, before Starlette ran it
        if _observe.hook is not None:
            _observe.hook.external_run(context)
        try:
            # Stepped in that context, so the function sees it and its own
            # changes stay out of the request's; its cancel scope is what
            # cancel() and shutdown cancel.
            failure = await in_context(context, self._execute_in_scope(record))
        finally:
            if self.slots is not None:
                self._release_slot()
        if failure is not None and self._propagate_errors:
            raise failure

    async def _acquire_external_slot(self, record: TaskRecord) -> bool:
        """Wait, in FIFO order, for a slot for an ``add_task`` record.

        Returns True if the slot is held and the task should run.
        """
        slots = self.slots
        assert slots is not None  # the caller checks
        with self.lock:  # the caller saw it PENDING, with no await since
            if slots.take():
                return True
            waiter = SlotWaiter()
            slots.enqueue(record, waiter)
        try:
            await waiter.event.wait()
            # Yield once more, as starting a child task did: a cancel() in the
            # loop turn of the grant still finds the task PENDING.
            await anyio.lowlevel.checkpoint()
        except BaseException:
            # The request's task was cancelled while it waited: never runs.
            with self.lock:
                slots.drop_waiter(record)
            if waiter.granted:
                self._release_slot()
            await self._cancel_pending(record)
            raise
        if waiter.granted and record.state is not TaskState.PENDING:
            self._release_slot()
            return False
        return waiter.granted

    # -- execution ----------------------------------------------------------

    async def _run_spawned(self, record: TaskRecord) -> None:
        try:
            await self._execute_scoped(record)
        finally:
            self._release_slot()

    async def _execute_scoped(self, record: TaskRecord) -> Exception | None:
        if self._use_task_handles:
            return await self._execute(record)
        return await self._execute_in_scope(record)

    async def _execute_in_scope(self, record: TaskRecord) -> Exception | None:
        """Run a record in a cancel scope of its own, its cancel switch."""
        scope = self._new_scope()
        try:
            with scope:  # swallows its own cancellation
                return await self._execute(record, scope)
        except anyio.get_cancelled_exc_class():
            # anyio < 4.14 on asyncio: a worker thread's check_cancelled() raises
            # a CancelledError our scope does not take for its own; it is ours.
            if not scope.cancel_called:
                raise
            await anyio.lowlevel.checkpoint_if_cancelled()  # an outer cancel goes on
        return None

    async def _execute(  # noqa: PLR0912, PLR0915 - the hot path, kept in one frame for speed
        self, record: TaskRecord, switch: Cancellable | None = None
    ) -> Exception | None:
        """Run a PENDING record's call to a terminal state; return its exception.

        ``switch``: what cancels the record from now on, if not set yet.
        Cancellation (and other BaseExceptions) is recorded, then re-raised.
        """
        subscribers = self.subscribers
        started = time.time()
        lock = self.lock
        lock.acquire()  # not `with`: on the per-task path it costs twice as much
        try:
            if record.state is not _PENDING:
                return None  # cancelled before it started: never runs
            if switch is not None:  # under the lock: what cancel() looks at
                record.run = switch
            created = record.snapshot() if subscribers.async_ else None
            record.state = _RUNNING
            record.started = started
            info = record.snapshot() if subscribers.any else None
            func, args, kwargs, owner = (
                record.func,
                record.args,
                record.kwargs,
                record.owner,
            )
        finally:
            lock.release()
        if self.link is not None:
            self.link.push(record.id, {"state": "running", "started": started})
        assert func is not None  # a PENDING record holds its call
        running_task_var.set(record)
        if _observe.hook is not None:
            _observe.hook.task_started(record)
        try:
            if info is not None:
                await subscribers.announce_start(created, info)
            if owner is not None and owner is not SYNC:
                args = (owner, *args)  # a method's object, kept apart until now
            if owner is not SYNC:
                if kwargs is None:
                    result = await func(*args)
                else:
                    result = await func(*args, **kwargs)
            elif kwargs is None:
                result = await anyio.to_thread.run_sync(func, *args)
            else:
                result = await anyio.to_thread.run_sync(
                    functools.partial(func, *args, **kwargs)
                )
        except Exception as exc:
            event = self._finish(record, TaskState.FAILED, error_of(exc))
            if self._log_failures and not _logs_itself(func):
                logger.exception(
                    "Task %s (%s) failed with %s",
                    record.name,
                    record.id,
                    type(exc).__qualname__,
                )
            if event is not None:
                await self.subscribers.announce([event])
            return exc
        except BaseException as exc:
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                event = self._finish(record, TaskState.CANCELLED, None)
            else:  # KeyboardInterrupt, SystemExit: record, then let it through
                event = self._finish(record, TaskState.FAILED, error_of(exc))
            if event is not None:
                await self.subscribers.announce([event])
            raise
        # Also when a cancel was requested but the function returned anyway.
        event = self._finish(record, TaskState.SUCCEEDED, result)
        if event is not None:
            await self.subscribers.announce([event])
        return None

    # -- transitions --------------------------------------------------------

    def _finish(
        self, record: TaskRecord, state: TaskState, outcome: Any
    ) -> TaskEvent | None:
        """Move a RUNNING record to ``state``; return the event to announce."""
        now = time.time()
        mono = self.registry.clock()
        lock = self.lock
        lock.acquire()  # not `with`: on the per-task path it costs twice as much
        try:
            event = self._end(record, state, outcome, now, mono)
        finally:
            lock.release()
        if _observe.hook is not None:
            _observe.hook.task_ended(record)
        return event

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
        # Drop the call: a finished record keeps none of the task's arguments.
        record.func = record.kwargs = record.owner = record.run = None
        record.args = ()
        self.active -= 1
        self.registry.finished(record, mono)
        if self.link is not None:
            self.link.push(record.id, final_fields(record), True)
        if self._waiters:
            waiter = self._waiters.pop(record, None)
            if waiter is not None:
                waiter.set()
        if self.active == 0 and self._idle is not None:
            self._idle.set()
        if self.subscribers.any:
            return TaskEvent(record.id, old, state, record.snapshot())
        return None

    def _end_pending(
        self, record: TaskRecord, now: float, mono: float, reason: str | None = None
    ) -> list[TaskEvent]:
        """Cancel a PENDING record that never ran (lock held); return its events.

        ``reason``: the cancel reason its snapshot shows, if bgtasks has one.
        """
        record.cancel_requested = True
        created = record.snapshot() if self.subscribers.async_ else None
        event = self._end(record, TaskState.CANCELLED, reason, now, mono)
        if _observe.hook is not None:
            _observe.hook.task_dropped(record)
        if self.slots is not None:
            self.slots.forget(record)
        if event is None:
            return []
        if created is None:
            return [event]
        return [TaskEvent(record.id, None, _PENDING, created), event]

    async def _cancel_pending(self, record: TaskRecord) -> None:
        now = time.time()
        mono = self.registry.clock()
        with self.lock:
            if record.state is not _PENDING:  # pragma: no cover - shutdown won a race
                return
            events = self._end_pending(record, now, mono)
        await self.subscribers.announce(events)

    def abandon_soon(self, record: TaskRecord) -> None:
        """Have the loop cancel an ``add_task`` record whose wrapper is gone.

        Called by the wrapper's finalizer, so from any thread at any
        allocation, maybe while this very thread holds the (non-reentrant)
        lock: it never takes the lock, it only schedules ``abandon``.
        """
        schedule = self.schedule
        if schedule is None:
            return  # closed: shutdown ended every PENDING record
        with contextlib.suppress(RuntimeError):  # the loop ended meanwhile
            schedule(functools.partial(self.abandon, record))

    def abandon(self, record: TaskRecord) -> None:
        """Cancel a PENDING record whose wrapper will never run (loop thread).

        Package-internal: the FastAPI dependency calls it for a failed request.
        """
        now = time.time()
        mono = self.registry.clock()
        with self.lock:
            if record.state is not _PENDING:
                return  # ran, or was cancelled, before its wrapper went
            events = self._end_pending(record, now, mono, RESPONSE_NOT_SENT)
        subscribers = self.subscribers
        if not events:
            return
        tg = self.tg
        if subscribers.async_ and tg is not None:
            tg.start_soon(subscribers.announce, events)
        else:  # no async subscriber (or closing): tell the sync ones now
            subscribers.notify_sync([e for e in events if e.old_state is not None])

    # -- cancelling and waiting -------------------------------------------

    async def cancel_record(self, record: TaskRecord) -> bool:
        """Cancel a PENDING record, or ask a RUNNING one to stop; False if ended."""
        now = time.time()
        mono = self.registry.clock()
        with self.lock:
            if record.state.is_finished:
                return False
            if record.state is TaskState.PENDING:
                events = self._end_pending(record, now, mono)
            else:
                events = []
                record.cancel_requested = True
                if self.link is not None:
                    self.link.push(record.id, {"cancel_requested": True})
                switch = _switch(record)
                if switch is not None:  # pragma: no branch
                    switch.cancel()
        await self.subscribers.announce(events)
        return True

    async def _cancel_all(self) -> None:
        """Cancel every PENDING and RUNNING task (shutdown, after draining)."""
        now = time.time()
        mono = self.registry.clock()
        events: list[TaskEvent] = []
        scopes: list[Cancellable] = []
        with self.lock:
            for record in self.registry.active():
                if record.state is TaskState.PENDING:
                    events.extend(self._end_pending(record, now, mono))
                else:
                    record.cancel_requested = True
                    if self.link is not None:
                        self.link.push(record.id, {"cancel_requested": True})
                    switch = _switch(record)
                    if switch is not None:  # pragma: no branch
                        scopes.append(switch)
            if self.slots is not None:
                self.slots.clear()
        for scope in scopes:
            scope.cancel()
        await self.subscribers.announce(events)

    async def wait_record(self, record: TaskRecord, limit: float | None) -> TaskInfo:
        """Wait until ``record`` is finished; return its final snapshot."""
        info = record.info  # set once the record is final, then never changed
        if info is not None:
            return info
        with self.lock:
            if record.state.is_finished:
                return record.snapshot()
            event = self._waiters.get(record)
            if event is None:
                event = self._waiters[record] = anyio.Event()
        with anyio.fail_after(limit):
            await event.wait()
        with self.lock:
            return record.snapshot()

    def info_of(self, record: TaskRecord) -> TaskInfo | None:
        """Snapshot ``record``, or None once retention dropped it."""
        with self.lock:
            return record.snapshot() if self.registry.is_stored(record) else None


def _logs_itself(func: Callable[..., Any]) -> bool:
    """Tell whether ``func`` is ``@logged``, which logged this failure already.

    Seen through ``functools.partial`` and bound methods (whose attributes are
    their function's); every ``@logged`` wrapper, and every wrapper stacked on
    it with ``functools.wraps``, carries ``__bgtasks_logged__``.
    """
    return getattr(unwrap_partial(func), "__bgtasks_logged__", False) is True


def _switch(record: TaskRecord) -> Cancellable | None:
    """Return what cancels a launched record; None before its launch is done."""
    run = record.run
    return None if run is None or isinstance(run, Context) else run


def _loop_scheduler(
    token: EventLoopToken,
) -> Callable[[Callable[[], object]], object]:
    """Return the loop's thread-safe, non-blocking "call this soon"."""
    # anyio >= 4.11 wraps the native token: an asyncio loop or a TrioToken.
    native: Any = getattr(token, "native_token", token)
    return cast(
        "Callable[[Callable[[], object]], object]",
        getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon,
    )


def not_running() -> ManagerNotRunningError:
    return ManagerNotRunningError(
        "the TaskManager is not running: enter it first (`async with manager:`, "
        "e.g. in the app's lifespan); it stops accepting tasks once it closes."
    )
