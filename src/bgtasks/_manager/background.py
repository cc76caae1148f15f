"""What ``add_task`` puts in Starlette's ``BackgroundTasks``, and how it runs there."""

from __future__ import annotations

import types
from collections.abc import Callable, Coroutine, Generator
from contextvars import Context
from typing import TYPE_CHECKING, Any, TypeVar, cast

from starlette.background import BackgroundTask, BackgroundTasks

from .._wrap import unwrap_partial
from .records import TaskRecord, TaskState

if TYPE_CHECKING:
    from .engine import Engine

__all__ = ["TrackedTask", "add_tracked", "in_context", "unsent"]

T = TypeVar("T")


class TrackedTask(BackgroundTask):
    """One ``add_task`` task in a request's ``BackgroundTasks``.

    Starlette (and FastAPI) await each task of the request's
    ``BackgroundTasks`` in turn, after the response; awaiting this one runs
    its record through the manager, which sends a sync function to a worker
    thread itself (so ``is_async`` is True whatever the function's kind).
    ``func`` is the task's function, for what reads it by name (FastAPI's
    telemetry names the task by its ``__module__`` and ``__qualname__``);
    ``args`` and ``kwargs`` stay empty, as the call itself is in the record.

    If the task is dropped unrun (the endpoint raised, the response went out
    without its background tasks, the client was gone), its finalizer has the
    manager cancel the record at once, as "response not sent".
    """

    is_async = True

    def __init__(self, engine: Engine, record: TaskRecord, func: Any) -> None:
        # Not BackgroundTask.__init__: it would inspect the function's kind
        # again, which add_task knows already (a third of plain add_task's cost).
        self.engine = engine
        self.record = record
        self.func = func
        # Typed by Starlette as the function's P.args / P.kwargs; empty here.
        self.args = ()  # type: ignore[assignment]
        self.kwargs = {}  # type: ignore[assignment]

    async def __call__(self) -> None:
        await self.engine.run_external(self.record)

    def __del__(self) -> None:
        record = self.record
        # Read without the lock: a finalizer may run while this thread holds it.
        if record.state is TaskState.PENDING:
            self.engine.abandon_soon(record)


# The add_task of Starlette's BackgroundTasks and of FastAPI's subclass (which
# only documents it again) just append a BackgroundTask: append ours directly.
_PLAIN_ADD_TASK = BackgroundTasks.add_task
_direct: dict[type[BackgroundTasks], bool] = {}


def add_tracked(
    background_tasks: BackgroundTasks,
    engine: Engine,
    record: TaskRecord,
    func: Callable[..., Any],
) -> None:
    """Add ``record``'s task to ``background_tasks``, after their other tasks."""
    task = TrackedTask(engine, record, unwrap_partial(func))
    kind = type(background_tasks)
    direct = _direct.get(kind)
    if direct is None:
        direct = _direct[kind] = _appends_only(kind)
    if direct:
        background_tasks.tasks.append(task)
    else:  # a subclass with its own add_task: let it see the task
        background_tasks.add_task(task)


def _appends_only(kind: type[BackgroundTasks]) -> bool:
    add_task: Any = kind.add_task
    return add_task is _PLAIN_ADD_TASK or (
        getattr(add_task, "__module__", None) == "fastapi.background"
        and getattr(add_task, "__qualname__", None) == "BackgroundTasks.add_task"
    )


def unsent(background_tasks: BackgroundTasks) -> list[TaskRecord]:
    """Return the records of the ``add_task`` tasks in ``background_tasks``."""
    found: list[TaskRecord] = []
    for task in background_tasks.tasks:
        func = cast("object", task.func)
        if isinstance(task, TrackedTask):
            found.append(task.record)
        elif isinstance(func, TrackedTask):  # added through a subclass's add_task
            found.append(func.record)
    return found


@types.coroutine
def in_context(
    context: Context, coro: Coroutine[Any, Any, T]
) -> Generator[Any, Any, T]:
    """Await ``coro`` in the current task, with each of its steps run in ``context``.

    What a child task would give (the coroutine sees ``context`` and its own
    changes stay there), without the child task: the event loop's messages
    (futures, trio's traps) and what it sends or throws back pass through
    unchanged, so this works on any backend. A child task group and task, and
    the loop turns to start and join them, cost about 50 µs per task.
    """
    run = context.run
    send = coro.send
    try:
        message = run(send, None)
        while True:
            try:
                reply = yield message
            except BaseException as exc:  # noqa: PERF203 - cancellation, GeneratorExit: passed on
                message = run(coro.throw, exc)
            else:
                message = run(send, reply)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
