"""``@retry``: retry a sync or async task function, cheaply and cancel-safely.

The wrapper's success path is a bare ``try: return func(...)``: no clock, no
context variable, no allocation. Only a failure enters ``_retry_sync`` or
``_retry_async``, which own the attempts from the second on. Only ``Exception``
is ever caught, so cancellation, ``KeyboardInterrupt``, ``SystemExit`` and
``GeneratorExit`` pass through untouched, whatever ``on=`` says.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar, cast

import anyio
import anyio.from_thread
import anyio.lowlevel
from typing_extensions import ParamSpec

from ._backoff import exponential
from ._context import RETRY_MARKER
from ._deadline import in_worker_thread, may_stop, remaining, stop_if_due
from ._retry_policy import RetryEvent, RetryPolicy, RetryRun
from ._wrap import callable_name, is_async_callable, wrap_same_kind

__all__ = ["RetryEvent", "retry"]

P = ParamSpec("P")
T = TypeVar("T")

_DEFAULT_BACKOFF = exponential()
_NO_RESULT: Any = None
# Clocks and sleeps, looked up at each use so that tests can replace them.
_sync_clock: Callable[[], float] = time.monotonic
_sync_sleep: Callable[[float], object] = time.sleep
_async_clock: Callable[[], float] = anyio.current_time
_async_sleep: Callable[[float], Coroutine[Any, Any, object]] = anyio.sleep


def retry(
    _func: None = None,
    /,
    *,
    on: type[Exception]
    | tuple[type[Exception], ...]
    | Callable[[Exception], bool] = Exception,
    attempts: int = 3,
    backoff: Callable[[int], float] | float = _DEFAULT_BACKOFF,
    deadline: float | timedelta | None = None,
    retry_if: Callable[[Any], bool] | None = None,
    on_retry: Callable[[RetryEvent], object] | None = None,
    logger: logging.Logger | None = None,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Retry a task function when it fails, waiting longer after each failure.

    Works on ``def`` and ``async def`` alike and keeps the kind, name, signature
    and types of the function. When attempts or the deadline run out, the last
    exception is re-raised unchanged (same object and traceback) with a note
    (Python 3.11+) saying ``bgtasks.retry: gave up on ... after 3 attempts in
    0.7s``. Cancellation and other ``BaseException`` are never retried.

    Args:
        on: what to retry: an exception class, a tuple of them, or a predicate
            ``(exception) -> bool``. Only ``Exception`` subclasses can match.
        attempts: total number of tries, >= 1 (``attempts=1`` never retries).
        backoff: the delay strategy from `bgtasks.backoff`, any callable
            ``(attempt) -> seconds`` (called with the attempt that failed, from
            1), or a number of seconds for a fixed delay. Default:
            ``backoff.exponential()``: 0.1 s doubling up to 10 s, full jitter.
        deadline: total budget in seconds (or a ``timedelta``) across attempts
            and waits; no wait starts that would end past it. An attempt in
            progress is not interrupted: put ``@timeout`` inside for that.
        retry_if: a predicate on the return value; when true, the call is
            retried as if it had failed. When attempts run out the last result
            is returned (the function's own way to report failure), and a
            warning is logged.
        on_retry: called with a `RetryEvent` before each wait; an ``async``
            hook is awaited (async functions only). A hook that raises is
            logged and the retries go on.
        logger: where each retry is logged at WARNING (exception type and
            message, never argument values); default: the ``bgtasks`` logger.

    Returns:
        A decorator; apply it with parentheses: ``@retry()``.

    Raises:
        TypeError: used bare as ``@retry``, an argument of the wrong type, an
            async ``on_retry`` on a sync function, or an undecoratable target.
        ValueError: ``attempts < 1``, a negative delay or deadline, or an ``on``
            class that is not an ``Exception`` (it could never be retried).

    Example:
        ```python
        @retry(on=ConnectionError, attempts=5, backoff=backoff.exponential(maximum=5))
        async def send_email(to: str) -> None: ...
        ```
    """
    if _func is not None:  # pyright: ignore[reportUnnecessaryComparison]
        raise TypeError(
            "@retry needs parentheses: write @retry() or @retry(attempts=5, ...), "
            f"not @retry (it received {_func!r} as its first argument)."
        )
    policy = RetryPolicy.from_options(
        on=on,
        attempts=attempts,
        backoff=backoff,
        deadline=deadline,
        retry_if=retry_if,
        on_retry=on_retry,
        logger=logger,
    )

    def decorate(func: Callable[P, T]) -> Callable[P, T]:
        wrapped = wrap_same_kind(
            func,
            "retry",
            sync=functools.partial(_make_sync, policy),
            async_=functools.partial(_make_async, policy),
        )
        # The wrapped function identifies this layer (outer decorators copy it).
        wrapped.__dict__[RETRY_MARKER] = func
        return cast("Callable[P, T]", wrapped)

    return decorate


def _make_sync(policy: RetryPolicy, func: Callable[..., Any]) -> Callable[..., Any]:
    if policy.on_retry is not None and is_async_callable(policy.on_retry):
        raise TypeError(
            f"@retry(on_retry={policy.on_retry!r}) is async but "
            f"{callable_name(func)} is a plain function, which cannot await it: "
            "pass a sync on_retry hook, or make the task async def."
        )
    name = callable_name(func)
    catch, predicate = policy.catch, policy.predicate

    if policy.deadline is None and policy.retry_if is None:

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return func(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not predicate(exc):
                    raise
                error = exc
            try:
                run = RetryRun(policy, name, None, error, _NO_RESULT, func)
                return _retry_sync(run, func, args, kwargs)
            finally:
                del error  # no exception -> traceback -> frame cycle

        return wrapper

    retry_if, timed = policy.retry_if, policy.deadline is not None

    def wrapper_with_options(*args: Any, **kwargs: Any) -> Any:
        start = _sync_clock() if timed else None
        try:
            result = func(*args, **kwargs)
        except catch as exc:
            if predicate is not None and not predicate(exc):
                raise
            error: Exception | None = exc
            result = _NO_RESULT
        else:
            if retry_if is None or not retry_if(result):
                return result
            error = None
        try:
            run = RetryRun(policy, name, start, error, result, func)
            return _retry_sync(run, func, args, kwargs)
        finally:
            del error  # no exception -> traceback -> frame cycle

    return wrapper_with_options


def _make_async(
    policy: RetryPolicy, func: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    name = callable_name(func)
    catch, predicate = policy.catch, policy.predicate

    if policy.deadline is None and policy.retry_if is None:

        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return await func(*args, **kwargs)
            except catch as exc:
                if predicate is not None and not predicate(exc):
                    raise
                error = exc
            try:
                run = RetryRun(policy, name, None, error, _NO_RESULT, func)
                return await _retry_async(run, func, args, kwargs)
            finally:
                del error  # no exception -> traceback -> frame cycle

        return wrapper

    retry_if, timed = policy.retry_if, policy.deadline is not None

    async def wrapper_with_options(*args: Any, **kwargs: Any) -> Any:
        start = _async_clock() if timed else None
        try:
            result = await func(*args, **kwargs)
        except catch as exc:
            if predicate is not None and not predicate(exc):
                raise
            error: Exception | None = exc
            result = _NO_RESULT
        else:
            if retry_if is None or not retry_if(result):
                return result
            error = None
        try:
            run = RetryRun(policy, name, start, error, result, func)
            return await _retry_async(run, func, args, kwargs)
        finally:
            del error  # no exception -> traceback -> frame cycle

    return wrapper_with_options


def _retry_sync(
    run: RetryRun,
    func: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run attempts 2..N of a sync call whose first attempt failed."""
    clock = _sync_clock
    hooked = run.policy.on_retry is not None
    stoppable = may_stop()  # else a zero wait has nothing to check
    try:
        while (delay := run.next_retry(clock)) is not None:
            if hooked:
                _discard(run, run.call_hook())
            if delay > 0 or stoppable:
                _wait_sync(run, delay)
            run.next_attempt()
            try:
                result = func(*args, **kwargs)
            except Exception as exc:  # never cancellation, whatever on= says
                if not run.failed(exc):
                    raise
                continue
            if run.accepted(result):
                return result
        return run.give_up(clock())
    finally:
        run.forget()


async def _retry_async(
    run: RetryRun,
    func: Callable[..., Awaitable[Any]],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Any:
    """Run attempts 2..N of an async call whose first attempt failed."""
    clock = _async_clock
    hooked = run.policy.on_retry is not None
    try:
        while (delay := run.next_retry(clock)) is not None:
            if hooked:
                await _await_hook(run, run.call_hook())
            if delay > 0:
                await _async_sleep(delay)
            else:  # a skipped wait is a cancellation point, as a real one would be
                await anyio.lowlevel.checkpoint_if_cancelled()
            run.next_attempt()
            try:
                result = await func(*args, **kwargs)
            except Exception as exc:  # never cancellation, whatever on= says
                if not run.failed(exc):
                    raise
                continue
            if run.accepted(result):
                return result
        return run.give_up(clock())
    finally:
        run.forget()


def _wait_sync(run: RetryRun, delay: float) -> None:
    """Wait before a sync retry, or less: until a @timeout deadline or a cancel.

    In an anyio worker thread the wait runs on the host task's event loop, in
    its cancel scope, so cancelling the task ends the wait at once (raising its
    cancellation exception here). Elsewhere nothing can cancel the thread. No
    attempt starts after a cancel or a passed deadline.
    """
    if delay > 0:
        left = remaining()
        if left is not None:
            delay = min(delay, left)  # stop_if_due raises TimeoutError after it
        if in_worker_thread():
            anyio.from_thread.run(_async_sleep, delay)
        else:
            _sync_sleep(delay)
    stop_if_due(f"the retry of {run.name}")


def _discard(run: RetryRun, pending: object) -> None:
    """Close the coroutine a hook returned in a sync function: it cannot be awaited."""
    if pending is None:
        return
    close = getattr(pending, "close", None)
    if close is not None:
        close()
    run.policy.logger.error(
        "bgtasks.retry: the on_retry hook of %s returned an awaitable, which a "
        "sync function cannot await; it was discarded",
        run.name,
        extra={"task_name": run.name, "attempt": run.attempt},
    )


async def _await_hook(run: RetryRun, pending: object) -> None:
    """Await what an async hook returned; log what it raised and go on."""
    if pending is None:
        return
    try:
        await cast("Awaitable[object]", pending)
    except Exception:
        run.hook_failed()
