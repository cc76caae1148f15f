"""Checking what is submitted to a TaskManager, and wrapping it for Starlette."""

from __future__ import annotations

import contextvars
import functools
import inspect
import weakref
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import TYPE_CHECKING, Any

from .._wrap import is_async_callable, unwrap_partial
from ..exceptions import ManagerNotRunningError
from .records import SYNC, TaskRecord, TaskState

if TYPE_CHECKING:
    from starlette.background import BackgroundTasks

__all__ = [
    "capture",
    "current_library",
    "not_running",
    "resolve",
    "tracked_wrapper",
    "unsent",
]


_CO_COROUTINE = inspect.CO_COROUTINE


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


def resolve(
    func: Callable[..., Any], method: str
) -> tuple[str, Callable[..., Any], object]:
    """Return a task's name, the function to call and its ``owner``.

    The owner is as a TaskRecord keeps it: None (await the function), ``SYNC``
    (call it in a worker thread) or, for an async bound method, the method's
    object, kept apart from its function so that no bound method object lives
    per pending task for the garbage collector to walk.

    Raises:
        TypeError: not callable, or a generator function.
    """
    target: Callable[..., Any] = func
    owner: object = None
    if isinstance(func, MethodType):
        target, owner = func.__func__, func.__self__
    if type(target) is FunctionType and target.__code__.co_flags & _CO_COROUTINE:
        # An ``async def`` function or method, the usual task: its name and kind
        # are right there, which is cheaper than any cache (this runs for
        # every submission).
        return target.__qualname__, target, owner
    # A bound method is a new object at every access and is described exactly
    # as its function, which lasts: cache that instead.
    key = target if type(target) is FunctionType else func
    entry = _DESCRIPTIONS.get(id(key))
    name, is_async = (
        entry[1]
        if entry is not None and entry[0]() is key
        else _describe(func, method, key)
    )
    if not is_async:
        return name, func, SYNC
    return name, target, owner


def capture(library: str | None) -> contextvars.Context:
    """Capture the caller's context for a submission that will start later.

    ``library`` is the manager's async library as sniffio names it, given
    for submissions from outside the loop's tasks: anyio blanks sniffio's
    variable in its worker threads (and other threads never had it), and the
    captured context must not carry that blank into the loop.
    """
    context = contextvars.copy_context()
    if library is not None and context.get(_LIBRARY_VAR) != library:  # type: ignore[arg-type]
        context.run(_LIBRARY_VAR.set, library)  # type: ignore[union-attr]
    return context


def current_library() -> str | None:
    """Return sniffio's name for the running async library, if sniffio is here."""
    if _LIBRARY_VAR is None:  # pragma: no cover - sniffio comes with trio, httpx
        return None
    import sniffio  # noqa: PLC0415 - optional, like in anyio

    return sniffio.current_async_library()


def _library_var() -> contextvars.ContextVar[str | None] | None:
    try:
        import sniffio  # noqa: PLC0415 - optional, like in anyio
    except ImportError:  # pragma: no cover - then anyio blanks nothing
        return None
    return sniffio.current_async_library_cvar


_LIBRARY_VAR = _library_var()


# Functions are submitted again and again: check each one once. Weak: a
# partial, closure or bound method carries the task's arguments, and a cache
# must not keep them alive after the task ends. Keyed by id() and confirmed
# through the weak reference: resolve() runs on every submission (of anything
# but an async def) and a plain dict lookup costs a third of a
# WeakKeyDictionary's. Cleared when full.
_DESCRIPTIONS: dict[int, tuple[weakref.ref[object], tuple[str, bool]]] = {}
_DESCRIPTIONS_MAX = 1024


def _forget(key_id: int, ref: weakref.ref[object]) -> None:
    """Drop the cache entry of a function that is gone (its weakref callback)."""
    entry = _DESCRIPTIONS.get(key_id)
    if entry is not None and entry[0] is ref:
        _DESCRIPTIONS.pop(key_id, None)


def _describe(func: Callable[..., Any], method: str, key: object) -> tuple[str, bool]:
    """Return a task function's name and kind, refusing what cannot run.

    Raises:
        TypeError: not callable, or a generator function.
    """
    target = unwrap_partial(func)
    if not callable(target):
        raise TypeError(
            f"{method}() needs a function to run, got {type(func).__name__} "
            f"{func!r}; pass the function itself, then its arguments."
        )
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        raise TypeError(
            f"{method}() cannot run a generator function ({func!r}): its body runs "
            "only when iterated. Collect the results in a regular function."
        )
    name = getattr(target, "__qualname__", None)
    if not isinstance(name, str):
        name = type(target).__qualname__
    description = (name, is_async_callable(func))
    try:
        ref = weakref.ref(key, functools.partial(_forget, id(key)))
    except TypeError:  # takes no weak reference: not cached
        return description
    if len(_DESCRIPTIONS) >= _DESCRIPTIONS_MAX:
        _DESCRIPTIONS.clear()
    _DESCRIPTIONS[id(key)] = (ref, description)
    return description


def not_running() -> ManagerNotRunningError:
    return ManagerNotRunningError(
        "the TaskManager is not running: enter it first (`async with manager:`, "
        "e.g. in the app's lifespan); it stops accepting tasks once it closes."
    )
