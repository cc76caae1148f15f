"""The one sync/async wrapping mechanism every bgtasks decorator goes through.

Starlette awaits a background task when ``is_async_callable(func)`` is true and
sends everything else to a worker thread. A wrapper must therefore keep the kind
of the function it wraps: an ``async def`` task wrapped in a plain ``def`` would
never be awaited, and a ``def`` wrapped in ``async def`` would block the loop.
Each decorator supplies a sync and an async wrapper factory; this module decides
once which one applies, refuses what cannot be wrapped, and copies metadata.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["check_decoratable", "is_async_callable", "unwrap_partial", "wrap_same_kind"]

SyncFactory = Callable[[Callable[..., Any]], Callable[..., Any]]
AsyncFactory = Callable[[Callable[..., Awaitable[Any]]], Callable[..., Awaitable[Any]]]


def unwrap_partial(func: object) -> object:
    """Return what ``func`` calls in the end, under any ``functools.partial``."""
    while isinstance(func, functools.partial):
        func = func.func
    return func


def is_async_callable(obj: object) -> bool:
    """Tell whether calling ``obj`` returns a coroutine, as Starlette decides it.

    Sees through ``functools.partial`` and callable objects whose ``__call__`` is
    ``async def``, exactly like ``starlette._utils.is_async_callable``.
    """
    while isinstance(obj, functools.partial):
        obj = obj.func
    # An object whose __call__ is async counts too; B004 does not apply: we
    # need the attribute itself, not whether the object is callable.
    return inspect.iscoroutinefunction(obj) or (
        callable(obj) and inspect.iscoroutinefunction(obj.__call__)
    )


def check_decoratable(func: object, decorator: str) -> None:
    """Refuse, at decoration time, what a task decorator cannot wrap correctly.

    Raises:
        TypeError: ``func`` is a class, a generator or async generator function,
            or not callable at all; the message names the decorator and the fix.
    """
    target = func
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, type):
        raise TypeError(
            f"@{decorator} wraps functions, not classes: got class "
            f"{target.__qualname__!r}. Decorate a function or a method instead."
        )
    if not callable(target):
        raise TypeError(
            f"@{decorator} needs a function to wrap, got {type(target).__name__} "
            f"{target!r}. Apply it to a def or async def, and pass options as "
            f"keywords: @{decorator}(...)."
        )
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        is_agen = inspect.isasyncgenfunction(target)
        kind = "an async generator" if is_agen else "a generator"
        raise TypeError(
            f"@{decorator} cannot wrap {kind} function "
            f"({getattr(target, '__qualname__', target)!r}): its body runs only when "
            "iterated, after the wrapper has returned. Collect the results in a "
            "regular function and decorate that."
        )


def wrap_same_kind(
    func: Callable[..., Any],
    decorator: str,
    *,
    sync: SyncFactory,
    async_: AsyncFactory,
) -> Callable[..., Any]:
    """Wrap ``func`` with the factory of its own kind and copy its metadata.

    Args:
        func: the user's function, sync or async.
        decorator: the decorator's name, for error messages.
        sync: builds the wrapper for a plain function; it must return a ``def``.
        async_: builds the wrapper for a coroutine function; it must return an
            ``async def``, so ``inspect.iscoroutinefunction`` stays true.

    The wrapper gets ``__wrapped__``, ``__name__``, ``__qualname__``,
    ``__doc__``, ``__module__`` and the function's ``__dict__``, so
    ``inspect.signature`` and FastAPI see the original signature.
    """
    check_decoratable(func, decorator)
    wrapper = async_(func) if is_async_callable(func) else sync(func)
    return functools.update_wrapper(wrapper, func)
