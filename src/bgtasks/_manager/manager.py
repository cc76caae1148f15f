"""``TaskManager``: tracked background tasks with ids, status, progress, cancel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import anyio
from starlette.background import BackgroundTasks
from typing_extensions import ParamSpec, Self

from .._validate import check_int, to_seconds
from ..exceptions import TaskNotFoundError
from .backend import TaskBackend
from .background import add_tracked
from .current import TaskContext, current_task
from .engine import Engine
from .events import Subscriber
from .handle import TaskHandle
from .paging import TaskList, decode_cursor, encode_cursor
from .records import TaskInfo, TaskRecord, TaskState, info_of_entry
from .submit import capture

__all__ = ["TaskContext", "TaskManager", "current_task"]

P = ParamSpec("P")
T = TypeVar("T")

# alist(limit=None) reads the backend this many tasks per call.
_ALL_PAGE = 500
# wait() for another worker's task polls the backend this often, backing off.
_POLL_FIRST = 0.05
_POLL_MAX = 1.0


class TaskManager:
    """Run background tasks you can look up, wait for and cancel by id.

    Tasks run in the manager's own anyio task group: ``async def`` functions on
    the event loop, plain functions in a worker thread. Use it as an async
    context manager, typically in the app's lifespan: leaving it waits up to
    ``drain_timeout`` for running and pending tasks, then cancels the rest.

    Args:
        max_concurrency: at most this many tasks run at once; the others wait
            as PENDING, in submission order. None: no limit.
        max_finished: how many finished records to keep; the oldest finished
            ones are dropped first (in batches of ``max_finished // 16`` as
            tasks finish; reads never see more than ``max_finished``).
        finished_ttl: how long (seconds or a timedelta) to keep a finished
            record; None keeps them until ``max_finished`` pushes them out.
        drain_timeout: how long shutdown waits for tasks before cancelling.
        propagate_errors: re-raise a failing ``add_task`` task's exception after
            recording it, as plain Starlette does (which skips the request's
            remaining background tasks). Spawned tasks never re-raise.
        log_failures: log each failed task on the ``bgtasks`` logger at ERROR
            with its traceback (never its arguments), unless the task is
            ``@logged``, which logged it already.
        clock: monotonic seconds, for retention by age; tests pass a fake.
        backend: share task state with other workers, e.g.
            ``bgtasks.redis.RedisBackend.from_url(url)``: every transition is
            mirrored there, and the async reads (:meth:`aget`, :meth:`alist`,
            :meth:`cancel`, :meth:`wait`) answer for every worker's tasks.
            Entering the manager opens it, leaving closes it after the drain.
            None: everything stays in this process.

    Raises:
        TypeError: an option has the wrong type.
        ValueError: an option is out of range.

    Example:
        ```python
        manager = TaskManager(max_concurrency=8, max_finished=1000)
        ```
    """

    def __init__(
        self,
        *,
        max_concurrency: int | None = None,
        max_finished: int = 10_000,
        finished_ttl: float | timedelta | None = 3600.0,
        drain_timeout: float | timedelta = 10.0,
        propagate_errors: bool = False,
        log_failures: bool = True,
        clock: Callable[[], float] = time.monotonic,
        backend: TaskBackend | None = None,
    ) -> None:
        if max_concurrency is not None:
            check_int("max_concurrency", max_concurrency, minimum=1, none_ok=True)
        check_int("max_finished", max_finished, minimum=0)
        ttl = (
            None
            if finished_ttl is None
            else to_seconds(
                finished_ttl,
                "TaskManager(finished_ttl=...)",
                finite=False,
                zero_ok=True,
            )
        )
        drain = to_seconds(
            drain_timeout, "TaskManager(drain_timeout=...)", finite=False, zero_ok=True
        )
        if not callable(clock):
            raise TypeError(
                f"clock must be a callable returning monotonic seconds (like "
                f"time.monotonic), got {type(clock).__name__}."
            )
        if backend is not None and not isinstance(cast("object", backend), TaskBackend):
            raise TypeError(
                f"backend must be a task backend such as bgtasks.redis.RedisBackend"
                f" (RedisBackend.from_url(url)), got {type(backend).__name__}."
            )
        self._engine = Engine(
            max_concurrency=max_concurrency,
            max_finished=max_finished,
            finished_ttl=ttl,
            propagate_errors=propagate_errors,
            log_failures=log_failures,
            clock=clock,
            backend=backend,
        )
        self._drain_timeout = drain

    # -- lifecycle ----------------------------------------------------------

    @property
    def running(self) -> bool:
        """True from ``async with manager:`` until its close begins."""
        return self._engine.accepting

    async def __aenter__(self) -> Self:
        """Start the manager's task group; a closed manager may be entered again.

        Raises:
            RuntimeError: the manager is already running.
        """
        await self._engine.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Drain for ``drain_timeout`` (no drain if the body raised), then cancel."""
        await self._engine.close(0.0 if exc_type is not None else self._drain_timeout)

    async def aclose(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109 - a drain period, not a deadline
        """Stop accepting tasks, wait for them up to ``timeout``, cancel the rest.

        Afterwards every task is SUCCEEDED, FAILED or CANCELLED. Sync tasks
        cannot be killed: shutdown waits for them to notice the cancellation
        (``bgtasks.checkpoint()``) or return. Call it from the task that entered
        the manager, as a lifespan does. Closing a closed manager does nothing.

        Args:
            timeout: seconds to wait before cancelling; None uses
                ``drain_timeout``, 0 cancels at once.
        """
        drain = (
            self._drain_timeout
            if timeout is None
            else to_seconds(timeout, "aclose(timeout=...)", finite=False, zero_ok=True)
        )
        await self._engine.close(drain)

    # -- submission ---------------------------------------------------------

    @overload
    def spawn(
        self,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def spawn(
        self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    def spawn(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskHandle[Any]:
        """Start ``func(*args, **kwargs)`` as a tracked task; return at once.

        Safe from the event loop and from worker threads. The task runs with a
        copy of the caller's context variables. Type checkers check the
        arguments against ``func`` and give ``TaskHandle[T]``, ``T`` being
        what ``func`` returns (an ``async def``: what it returns when awaited).

        Args:
            func: an ``async def`` function (run on the loop) or a plain
                function (run in a worker thread).
            *args: positional arguments for ``func``.
            **kwargs: keyword arguments for ``func``. The task gets a random,
                unguessable id; to choose it, use :meth:`spawn_with_id`
                (``_task_id=...`` still works here, untyped).

        Raises:
            ManagerNotRunningError: the manager is not entered, or is closing.
            TypeError: ``func`` is not a function the manager can run.
        """
        engine = self._engine
        task_id = kwargs.pop("_task_id", None) if kwargs else None
        record = engine.new_record(func, args, kwargs, task_id, "spawn")
        if threading.get_ident() != engine.loop_thread:
            record.run = capture(engine.library)
            if engine.register(record, spawned=True):
                anyio.from_thread.run_sync(engine.launch, record, token=engine.token)
        elif engine.slots is None:
            # On the loop the task group copies the current context, which is
            # the submitter's: no copy of our own.
            engine.register(record, spawned=True)
            engine.start(record, None)
        else:
            record.run = capture(None)
            if engine.register(record, spawned=True):
                engine.launch(record)
        return TaskHandle(record)

    @overload
    def spawn_with_id(
        self,
        task_id: str,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def spawn_with_id(
        self, task_id: str, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    def spawn_with_id(
        self, task_id: str, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskHandle[Any]:
        """:meth:`spawn`, with the task's id chosen by the caller.

        Args:
            task_id: ``A-Z a-z 0-9 _ -``, 1 to 128 characters; free again
                once the task with that id has finished.
            func: as in :meth:`spawn`.
            *args: positional arguments for ``func``.
            **kwargs: keyword arguments for ``func``.

        Raises:
            ManagerNotRunningError: the manager is not entered, or is closing.
            TaskAlreadyExistsError: ``task_id`` belongs to an active task.
            TypeError: ``func`` is not a function the manager can run.
            ValueError: ``task_id`` is malformed.
        """
        kwargs["_task_id"] = task_id
        return self.spawn(func, *args, **kwargs)

    @overload
    def add_task(
        self,
        background_tasks: BackgroundTasks,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def add_task(
        self,
        background_tasks: BackgroundTasks,
        func: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    def add_task(
        self,
        background_tasks: BackgroundTasks,
        func: Callable[..., Any],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """Track ``func`` on the request's own ``BackgroundTasks``.

        The task is recorded as PENDING at once and runs when Starlette runs the
        request's background tasks, after the response. A task that fails is
        recorded and logged, and the request's next background tasks still run
        (unless ``propagate_errors=True``). If the response is never sent (the
        endpoint raised, the response went out without these background
        tasks, the client was gone), it never runs: it ends CANCELLED, with
        ``cancel_reason="response not sent"``.

        Args:
            background_tasks: Starlette's (or FastAPI's) ``BackgroundTasks``.
            func: the task function, sync or async.
            *args: positional arguments for ``func``.
            **kwargs: keyword arguments for ``func``; the id is chosen as in
                :meth:`spawn` (see :meth:`add_task_with_id`).

        Raises:
            ManagerNotRunningError: the manager is not entered, or is closing.
            TypeError: wrong argument types (the BackgroundTasks comes first).
        """
        tasks = cast("object", background_tasks)  # checked at run time: a common mix-up
        if not isinstance(tasks, BackgroundTasks):
            raise TypeError(
                "add_task() takes the request's BackgroundTasks first, then the "
                "function: manager.add_task(background_tasks, func, *args), got "
                f"{type(background_tasks).__name__}."
            )
        engine = self._engine
        task_id = kwargs.pop("_task_id", None) if kwargs else None
        record = engine.new_record(func, args, kwargs, task_id, "add_task")
        # From a worker thread (a sync endpoint), the context needs the loop's
        # async library set again; on the loop it has it already.
        on_loop = threading.get_ident() == engine.loop_thread
        record.run = capture(None if on_loop else engine.library)
        engine.register(record, spawned=False)
        add_tracked(background_tasks, engine, record, func)
        return TaskHandle(record)

    @overload
    def add_task_with_id(
        self,
        background_tasks: BackgroundTasks,
        task_id: str,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def add_task_with_id(
        self,
        background_tasks: BackgroundTasks,
        task_id: str,
        func: Callable[P, T],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    def add_task_with_id(
        self,
        background_tasks: BackgroundTasks,
        task_id: str,
        func: Callable[..., Any],
        /,
        *args: Any,
        **kwargs: Any,
    ) -> TaskHandle[Any]:
        """:meth:`add_task`, with the task's id chosen as in :meth:`spawn_with_id`.

        Raises:
            ManagerNotRunningError: the manager is not entered, or is closing.
            TaskAlreadyExistsError: ``task_id`` belongs to an active task.
            TypeError: wrong argument types (the BackgroundTasks comes first).
            ValueError: ``task_id`` is malformed.
        """
        kwargs["_task_id"] = task_id
        return self.add_task(background_tasks, func, *args, **kwargs)

    # -- queries ------------------------------------------------------------

    @property
    def backend(self) -> TaskBackend | None:
        """The shared backend given at construction, or None."""
        return self._engine.backend

    def get(self, task_id: str) -> TaskInfo | None:
        """Return a snapshot of the task, or None for an unknown (or dropped) id.

        Only this process's tasks: with a ``backend``, :meth:`aget` also
        finds the tasks of every other worker.
        """
        engine = self._engine
        with engine.lock:
            entry = engine.registry.get(task_id)
            return None if entry is None else info_of_entry(entry)

    def list(
        self,
        *,
        state: TaskState | str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> TaskList:
        """Return snapshots of this process's tasks, newest first, a page at a time.

        With a ``backend``, :meth:`alist` lists every worker's tasks.

        The result is a list with one more attribute, ``next_cursor``: pass
        it as ``after`` to get the next page. Paging stays exact while tasks
        are added and dropped: a page never repeats a task of an earlier
        page, and skips none that is still stored (tasks submitted after the
        first page show up when paging starts again from the newest).

        Args:
            state: only tasks in this state (a TaskState or its value).
            limit: at most this many.
            after: the ``next_cursor`` of an earlier page of this manager.

        Raises:
            ValueError: unknown state, a negative limit, or ``after`` is not
                a cursor of this manager.

        Example:
            ```python
            page = manager.list(limit=50)
            while page.next_cursor is not None:
                page = manager.list(limit=50, after=page.next_cursor)
            ```
        """
        wanted = None if state is None else TaskState(state)
        if limit is not None:
            check_int("limit", limit, minimum=0)
        registry = self._engine.registry
        before = None
        if after is not None:
            before = decode_cursor(after, registry.epoch)
            if before is None:
                raise ValueError(
                    "after must be the next_cursor of an earlier list() of this "
                    "TaskManager; pass None to start from the newest task."
                )
        if limit == 0:
            return TaskList()
        engine = self._engine
        with engine.lock:
            entries, next_seq = registry.page(wanted, limit, before)
            infos = [info_of_entry(entry) for entry in entries]
        return TaskList(
            infos, None if next_seq is None else encode_cursor(registry.epoch, next_seq)
        )

    async def cancel(self, task_id: str) -> bool:
        """Ask a task to stop; return False for unknown or finished tasks.

        A PENDING task is cancelled at once and never runs. A running ``async
        def`` task is cancelled at its next ``await``. A running sync task
        cannot be interrupted: it stops when it calls ``bgtasks.checkpoint()``
        (or ``anyio.from_thread.check_cancelled()``); until it stops, its
        snapshot shows ``cancel_requested=True``, and if it returns or raises
        anyway it ends SUCCEEDED or FAILED.

        With a ``backend``, a task of another worker is cancelled there: the
        request is stored and published, and that worker cancels the task
        within one heartbeat (``lease / 3``) at worst.

        Raises:
            BackendUnavailableError: the task is not this process's and the
                backend cannot answer.
        """
        engine = self._engine
        with engine.lock:
            entry = engine.registry.get(task_id)
        if isinstance(entry, TaskRecord):
            return await engine.cancel_record(entry)
        if entry is not None:
            return False  # finished: retention keeps its tuple
        backend = engine.backend
        if backend is None or engine.link is None:
            return False
        return bool(await backend.request_cancel(task_id))

    async def aget(self, task_id: str) -> TaskInfo | None:
        """Return a snapshot of the task, wherever it runs; None if unknown.

        This process's tasks are answered from memory; with a ``backend``,
        the others are read from it (so their snapshot is as fresh as their
        worker's last write: progress is written a few times a second).

        Raises:
            BackendUnavailableError: the backend cannot answer.
        """
        info = self.get(task_id)
        engine = self._engine
        if info is not None or engine.backend is None or engine.link is None:
            return info
        return await engine.backend.get(task_id)

    async def alist(
        self,
        *,
        state: TaskState | str | None = None,
        limit: int | None = None,
        after: str | None = None,
    ) -> TaskList:
        """:meth:`list`, for the tasks of every worker when there is a ``backend``.

        Without a backend (or before the manager is entered) it is
        :meth:`list`. With one, the page is read from the backend, newest
        first, with this process's tasks shown as fresh as in memory; the
        cursor is valid on every worker. With a ``state`` filter a page may
        hold fewer than ``limit`` tasks while ``next_cursor`` is not None:
        keep paging until it is.

        Raises:
            ValueError: unknown state, a negative limit, or ``after`` is not
                a cursor of this manager (or its backend).
            BackendUnavailableError: the backend cannot answer.
        """
        engine = self._engine
        backend = engine.backend
        if backend is None or engine.link is None:
            return self.list(state=state, limit=limit, after=after)
        wanted = None if state is None else TaskState(state)
        if limit is not None:
            check_int("limit", limit, minimum=0)
        if after is not None and not backend.is_cursor(after):
            raise ValueError(
                "after must be the next_cursor of an earlier alist() of a "
                "TaskManager on this backend; pass None to start from the newest."
            )
        if limit == 0:
            return TaskList()
        await backend.flush()  # this worker's own latest changes are listed too
        infos: list[TaskInfo] = []
        cursor = after
        while True:
            want = _ALL_PAGE if limit is None else limit - len(infos)
            page, cursor = await backend.list(wanted, want, cursor)
            infos += page
            if cursor is None or limit is not None:
                break
        with engine.lock:
            registry = engine.registry
            fresh = [registry.get(info.id) for info in infos]
            infos = [
                info if entry is None else info_of_entry(entry)
                for info, entry in zip(infos, fresh, strict=True)
            ]
        return TaskList(infos, cursor)

    async def wait(
        self,
        task_id: str,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - the API contract's name
    ) -> TaskInfo:
        """Wait until the task is finished and return its final snapshot.

        With a ``backend``, a task of another worker is waited for by polling
        the backend, every 0.05 s at first, backing off to every second.

        Raises:
            TaskNotFoundError: unknown (or already dropped) id.
            TimeoutError: the task did not finish within ``timeout`` seconds.
            BackendUnavailableError: the task is not this process's and the
                backend cannot answer.
        """
        engine = self._engine
        with engine.lock:
            entry = engine.registry.get(task_id)
            if entry is not None and not isinstance(entry, TaskRecord):
                return info_of_entry(entry)  # finished
        if entry is None and engine.backend is not None and engine.link is not None:
            with anyio.fail_after(timeout):
                return await self._poll(task_id)
        if entry is None:
            raise TaskNotFoundError(
                f"no task with id {task_id!r}: it never existed, or its record "
                "was dropped by retention (max_finished / finished_ttl)."
            )
        return await engine.wait_record(entry, timeout)

    async def _poll(self, task_id: str) -> TaskInfo:
        """Wait for another worker's task by reading the backend, with backoff."""
        delay = _POLL_FIRST
        while True:
            info = await self.aget(task_id)
            if info is None:
                raise TaskNotFoundError(
                    f"no task with id {task_id!r} on any worker: it never existed, "
                    "or its record was dropped by retention."
                )
            if info.state.is_finished:
                return info
            await anyio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` on every state change of every task.

        Sync callbacks run right after the change, in the thread that made it
        (the event loop, or a worker thread that submitted a task): keep them
        quick. Async callbacks are awaited by the task's own flow, so they see
        each task's events in order. A callback that raises is logged on the
        ``bgtasks`` logger and otherwise ignored.

        Returns:
            A function that unsubscribes ``callback``.
        """
        return self._engine.subscribers.add(callback)

    def __repr__(self) -> str:
        engine = self._engine
        state = "running" if engine.accepting else "stopped"
        return (
            f"<TaskManager {state} active={engine.active} "
            f"records={len(engine.registry)}>"
        )
