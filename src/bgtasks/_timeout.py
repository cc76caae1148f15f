"""``timeout``: a deadline per call, enforced for async code, cooperative for sync.

An ``async def`` runs inside ``anyio.fail_after``: it is cancelled at the
deadline on asyncio and trio alike, and cancelled again at its next ``await`` if
it swallows the first cancellation. A thread cannot be interrupted, so a plain
``def`` gets its deadline published for ``checkpoint()`` and ``remaining()``;
if it returns late anyway, its result is kept and a warning says by how much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from threading import get_ident
from typing import Any, Protocol, TypeVar

import anyio
from typing_extensions import ParamSpec

from . import _observe
from ._deadline import Deadline, checkpoint, deadline_var, remaining, seconds_left
from ._validate import to_seconds
from ._wrap import callable_name, wrap_same_kind

__all__ = ["TimeoutDecorator", "checkpoint", "remaining", "timeout"]

P = ParamSpec("P")
T = TypeVar("T")

_logger = logging.getLogger("bgtasks")


class TimeoutDecorator(Protocol):
    """What ``timeout(seconds)`` returns: keeps parameters, return type and kind."""

    def __call__(self, func: Callable[P, T], /) -> Callable[P, T]: ...


def timeout(seconds: float | timedelta) -> TimeoutDecorator:
    """Give each call of the decorated function a deadline.

    - ``async def``: the call is cancelled when the deadline passes and raises
      the builtin ``TimeoutError`` (through ``anyio.fail_after``, so on asyncio
      and trio). A function that swallows the cancellation is cancelled again
      at its next ``await``.
    - ``def``: a thread cannot be interrupted, so the deadline is cooperative.
      ``checkpoint()`` raises ``TimeoutError`` once it has passed and
      ``remaining()`` gives the seconds left for the I/O's own timeout. A call
      that returns after its deadline keeps its result, and a WARNING on the
      ``bgtasks`` logger says by how much it overran (``extra``: ``task_name``,
      ``timeout``, ``overrun``).

    Nested timeouts publish the earliest deadline. Sync functions stay sync
    and async functions stay async, so Starlette still runs them correctly.

    Args:
        seconds: the time each call may take: a positive, finite number of
            seconds or a ``datetime.timedelta``.

    Raises:
        TypeError: ``seconds`` is not a number or ``timedelta`` (a bool or a
            string, or ``@timeout`` written without its argument).
        ValueError: ``seconds`` is zero, negative, NaN or infinite.

    Examples:
        >>> from bgtasks import timeout
        >>> @timeout(30)
        ... async def generate_report(user_id: int) -> dict[str, int]:
        ...     return {"user_id": user_id}
    """
    limit = _check_seconds(seconds)

    def decorate(func: Callable[P, T], /) -> Callable[P, T]:
        name = callable_name(func)
        return wrap_same_kind(
            func,
            "timeout",
            sync=lambda f: _make_sync(f, limit, name),
            async_=lambda f: _make_async(f, limit, name),
        )

    return decorate


def _check_seconds(seconds: object) -> float:
    if callable(seconds) and not isinstance(seconds, timedelta):
        raise TypeError(
            "@timeout needs the number of seconds each call may take: write "
            "@timeout(30), not a bare @timeout."
        )
    return to_seconds(
        seconds, "timeout(seconds)", hint=" For no limit, leave out @timeout."
    )


def _make_async(
    func: Callable[..., Awaitable[Any]], limit: float, name: str
) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        scope: anyio.CancelScope | None = None
        try:
            with anyio.fail_after(limit) as scope:
                parent = deadline_var.get()
                # An earlier deadline from outside stays the published one.
                if parent is not None and seconds_left(parent) <= limit:
                    return await func(*args, **kwargs)
                token = deadline_var.set(
                    Deadline(
                        time.monotonic() + limit,
                        scope.deadline,  # the loop-clock deadline fail_after computed
                        get_ident(),
                        limit,
                        name,
                    )
                )
                try:
                    return await func(*args, **kwargs)
                finally:
                    deadline_var.reset(token)
        except TimeoutError as exc:
            if scope is None or not scope.cancelled_caught:
                raise  # the function's own TimeoutError, not this deadline
            if _observe.hook is not None:
                _observe.hook.timed_out(name, limit)
            raise TimeoutError(f"{name} timed out after {limit:g} s") from exc

    return wrapper


def _make_sync(func: Callable[..., Any], limit: float, name: str) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        own = time.monotonic() + limit
        parent = deadline_var.get()
        token = None
        if parent is None or seconds_left(parent) > limit:
            token = deadline_var.set(Deadline(own, None, 0, limit, name))
        try:
            result = func(*args, **kwargs)
        finally:
            if token is not None:
                deadline_var.reset(token)
        overrun = time.monotonic() - own
        if overrun > 0:
            if _observe.hook is not None:
                _observe.hook.timed_out(name, limit)
            _logger.warning(
                "%s returned %.3f s after the deadline of its %g s timeout: a sync "
                "function cannot be interrupted, so its result is kept. Call "
                "bgtasks.checkpoint() between its steps to stop it in time.",
                name,
                overrun,
                limit,
                extra={"task_name": name, "timeout": limit, "overrun": overrun},
            )
        return result

    return wrapper
