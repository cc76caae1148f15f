"""Checking what is submitted to a TaskManager, and capturing its context."""

from __future__ import annotations

import contextvars
import functools
import inspect
import weakref
from collections.abc import Callable
from types import FunctionType, MethodType
from typing import Any

from .._wrap import is_async_callable, unwrap_partial
from .records import SYNC

__all__ = ["capture", "current_library", "resolve"]


_CO_COROUTINE = inspect.CO_COROUTINE


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
