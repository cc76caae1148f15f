"""Start a task that belongs to the event loop itself, not to the caller.

The one place bgtasks reaches past anyio, and why: coredis 6 is strictly
structured (a client must be entered with ``async with``, by one task that
later exits it), yet a store made at import time must work in whatever loop
later calls it, from any task, with no ``async with`` of the user's. Such a
client needs a host task that outlives its first caller; anyio has no public
"system task", so this uses each backend's own: ``loop.create_task`` on
asyncio, ``trio.lowlevel.spawn_system_task`` on trio (imported lazily, only
on a trio loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import sys
from collections.abc import Callable, Coroutine
from typing import Any, cast

import anyio.lowlevel

__all__ = ["call_soon_threadsafe", "current_loop", "spawn_system_task"]


def current_loop() -> object:
    """Return the running loop's own handle (an asyncio loop, a trio token)."""
    # Every Redis call asks, so the common cases are answered directly, the way
    # anyio tells its backends apart (sniffio when present, else asyncio): a
    # tenth of anyio.lowlevel.current_token(), which wraps the native handle.
    sniffio = sys.modules.get("sniffio")
    library = "asyncio" if sniffio is None else _library(sniffio)
    if library == "asyncio":
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            pass
    elif library == "trio":
        # Imported already: sniffio said trio runs.
        return sys.modules["trio"].lowlevel.current_trio_token()
    token = anyio.lowlevel.current_token()  # none running: anyio's own error
    # anyio >= 4.11 wraps the native token; older releases return it bare.
    return getattr(token, "native_token", token)


def _library(sniffio: Any) -> str | None:
    try:
        return cast("str", sniffio.current_async_library())
    except sniffio.AsyncLibraryNotFoundError:
        return None


def spawn_system_task(
    loop: object, fn: Callable[[], Coroutine[Any, Any, None]]
) -> object:
    """Run ``fn()`` as a task of ``loop``, cancelled when the loop shuts down.

    Call it on the loop's own thread. Returns a handle the caller must keep
    referenced (asyncio holds its tasks weakly). ``fn`` must catch its own
    errors: an exception escaping a trio system task crashes the run.
    """
    # A fresh context: the task serves every caller, so it carries none's
    # context variables (a deadline, a current task) along.
    fresh = contextvars.Context()
    create_task = getattr(loop, "create_task", None)
    if create_task is not None:
        return fresh.run(create_task, fn())
    import trio.lowlevel  # noqa: PLC0415 - only a trio loop gets here

    return trio.lowlevel.spawn_system_task(fn, context=fresh)


def call_soon_threadsafe(loop: object, fn: Callable[[], object]) -> None:
    """Run ``fn()`` soon on ``loop``, from any thread; nothing if the loop is gone."""
    native: Any = loop
    # asyncio loops and trio tokens each have one public, thread-safe entry point.
    schedule = getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
    # A loop that has finished refuses, and its host has ended with it.
    with contextlib.suppress(RuntimeError):
        schedule(fn)
