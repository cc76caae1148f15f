"""The shared wrapping mechanism keeps the kind and metadata of what it wraps."""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from starlette._utils import is_async_callable as starlette_is_async

from bgtasks._wrap import check_decoratable, is_async_callable, wrap_same_kind


def _passthrough(func: Callable[..., Any]) -> Callable[..., Any]:
    def make_sync(f: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return f(*args, **kwargs)

        return wrapper

    def make_async(f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await f(*args, **kwargs)

        return wrapper

    return wrap_same_kind(func, "demo", sync=make_sync, async_=make_async)


def sync_task(email: str, count: int = 1) -> str:
    """Send something."""
    return email * count


async def async_task(email: str, count: int = 1) -> str:
    """Send something, asynchronously."""
    return email * count


class AsyncCallable:
    async def __call__(self, x: int) -> int:
        return x + 1


def test_sync_stays_sync() -> None:
    """A plain function gets a plain wrapper that Starlette sends to a thread."""
    wrapped = _passthrough(sync_task)
    assert not inspect.iscoroutinefunction(wrapped)
    assert not starlette_is_async(wrapped)
    assert wrapped("a", count=2) == "aa"


@pytest.mark.anyio
async def test_async_stays_async() -> None:
    """A coroutine function gets a coroutine wrapper that Starlette awaits."""
    wrapped = _passthrough(async_task)
    assert inspect.iscoroutinefunction(wrapped)
    assert starlette_is_async(wrapped)
    assert await wrapped("b", count=3) == "bbb"


def test_metadata_and_signature_are_kept() -> None:
    """Name, qualname, docstring, ``__wrapped__`` and signature survive wrapping."""
    wrapped = _passthrough(async_task)
    assert wrapped.__name__ == "async_task"
    assert wrapped.__qualname__ == "async_task"
    assert wrapped.__doc__ == "Send something, asynchronously."
    assert wrapped.__wrapped__ is async_task  # type: ignore[attr-defined]
    assert inspect.signature(wrapped) == inspect.signature(async_task)


@pytest.mark.anyio
async def test_partial_and_async_callable_objects_count_as_async() -> None:
    """Kind detection sees through partials and async ``__call__``, like Starlette."""
    part = functools.partial(async_task, "x")
    obj = AsyncCallable()
    assert is_async_callable(part) is starlette_is_async(part) is True
    assert is_async_callable(obj) is starlette_is_async(obj) is True
    assert await _passthrough(obj)(1) == 2
    assert is_async_callable(functools.partial(sync_task, "x")) is False


def _gen() -> Iterator[int]:
    yield 1


async def _agen() -> AsyncIterator[int]:
    yield 1


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (_gen, "generator function"),
        (_agen, "async generator function"),
        (AsyncCallable, "not classes"),
        (42, "needs a function to wrap"),
        (functools.partial(_gen), "generator function"),
    ],
)
def test_refuses_what_it_cannot_wrap(target: object, message: str) -> None:
    """Generators, classes and non-callables are refused with a clear TypeError."""
    with pytest.raises(TypeError, match=message):
        check_decoratable(target, "demo")
