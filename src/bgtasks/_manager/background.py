"""What ``add_task`` hands to Starlette's ``BackgroundTasks``, and its finalizer."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .._wrap import unwrap_partial
from .records import TaskRecord, TaskState

if TYPE_CHECKING:
    from starlette.background import BackgroundTasks

__all__ = ["tracked_wrapper", "unsent"]


def tracked_wrapper(
    run: Callable[[TaskRecord], Any], record: TaskRecord, func: Callable[..., Any]
) -> Callable[[], Any]:
    """Return the wrapper that ``add_task`` hands to ``BackgroundTasks``.

    Calling it returns a coroutine, so Starlette awaits it on the loop (the
    manager sends sync functions to a worker thread itself), and it carries
    the user function's name, qualname, module and docstring: FastAPI's spans
    and log lines name the background task by them.

    If the wrapper is dropped unrun (the endpoint raised, the response went
    out without its background tasks, the client was gone), a finalizer has
    the manager cancel the record at once, as "response not sent".
    """
    # A partial, not a closure, so unsent() can recognise it in a request's tasks.
    wrapper = functools.partial(_run_tracked, run, _Unrun(record))
    target = unwrap_partial(func)
    wrapper.__name__ = getattr(target, "__name__", record.name)  # type: ignore[attr-defined]
    wrapper.__qualname__ = record.name  # type: ignore[attr-defined]
    wrapper.__module__ = getattr(target, "__module__", None) or __name__
    wrapper.__doc__ = getattr(target, "__doc__", None)
    return wrapper


async def _run_tracked(run: Callable[[TaskRecord], Any], unrun: _Unrun) -> None:
    await run(unrun.record)


def unsent(background_tasks: BackgroundTasks) -> list[TaskRecord]:
    """Return the records of the ``add_task`` wrappers in ``background_tasks``."""
    found: list[TaskRecord] = []
    for task in background_tasks.tasks:
        func = task.func
        if isinstance(func, functools.partial) and func.func is _run_tracked:
            found.append(func.args[1].record)
    return found


class _Unrun:
    """Held only by an ``add_task`` wrapper: its finalizer ends the record unrun.

    Once the wrapper is gone nothing can run the record, so a record still
    PENDING then would stay so forever (and shutdown would wait for it).
    """

    __slots__ = ("record",)

    def __init__(self, record: TaskRecord) -> None:
        self.record = record

    def __del__(self) -> None:
        record = self.record
        # Read without the lock: a finalizer may run while this thread holds it.
        if record.state is TaskState.PENDING:
            record.engine.abandon_soon(record)
