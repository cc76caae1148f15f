"""Validation of ``@retry(...)`` options, at decoration time.

Each bad option fails here, when the decorator is built, with a ``TypeError``
or ``ValueError`` that names the argument and says how to fix it, instead of
surfacing at the first failure in production.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any, cast

from ._backoff import Backoff, fixed
from ._retry_policy import RetryPolicy
from ._validate import check_int, to_seconds

__all__ = ["build_policy"]


def build_policy(
    *,
    on: object,
    attempts: object,
    backoff: object,
    deadline: object,
    retry_if: object,
    on_retry: object,
    logger: object,
) -> RetryPolicy:
    """Check every option of ``retry`` and return the immutable policy."""
    catch, predicate = _check_on(on)
    return RetryPolicy(
        attempts=_check_attempts(attempts),
        catch=catch,
        predicate=predicate,
        backoff=_check_backoff(backoff),
        deadline=_check_deadline(deadline),
        retry_if=_check_callable("retry_if", retry_if),
        on_retry=_check_callable("on_retry", on_retry),
        logger=_check_logger(logger),
    )


def _check_on(
    on: object,
) -> tuple[tuple[type[Exception], ...], Callable[[Exception], bool] | None]:
    """Split ``on`` into the classes to catch and an optional predicate."""
    if isinstance(on, (type, tuple)):
        classes = cast("tuple[object, ...]", on if isinstance(on, tuple) else (on,))
        if not classes:
            raise ValueError(
                "retry(on=()) would retry nothing: give at least one class."
            )
        for cls in classes:
            if isinstance(cls, type) and issubclass(cls, Exception):
                continue
            if isinstance(cls, type) and issubclass(cls, BaseException):
                # A right type with a value that can never work: ValueError.
                raise ValueError(  # noqa: TRY004
                    f"retry(on={cls.__qualname__}) can never retry: only Exception "
                    "subclasses are retried; cancellation, KeyboardInterrupt, "
                    "SystemExit and GeneratorExit always propagate. Use on=Exception "
                    "or a narrower Exception subclass."
                )
            raise TypeError(
                f"retry(on=...) takes exception classes or a predicate, got {cls!r}."
            )
        return cast("tuple[type[Exception], ...]", classes), None
    if callable(on):
        return (Exception,), cast("Callable[[Exception], bool]", on)
    raise TypeError(
        "retry(on=...) takes an exception class, a tuple of them, or a predicate "
        f"(exception) -> bool, got {type(on).__name__} {on!r}."
    )


def _check_attempts(attempts: object) -> int:
    # attempts counts the first try too: attempts=1 never retries.
    check_int("retry(attempts=...)", attempts, minimum=1)
    return cast("int", attempts)


def _check_backoff(backoff: object) -> Callable[[int], float]:
    if isinstance(backoff, (int, float)) and not isinstance(backoff, bool):
        if not 0 <= backoff < math.inf:
            raise ValueError(
                f"retry(backoff={backoff!r}): a fixed delay must be a finite number "
                "of seconds >= 0."
            )
        return fixed(backoff)
    if isinstance(backoff, Backoff) or (
        callable(backoff) and not isinstance(backoff, type)
    ):
        return cast("Callable[[int], float]", backoff)
    raise TypeError(
        "retry(backoff=...) takes a strategy from bgtasks.backoff, a callable "
        f"(attempt) -> seconds, or a number of seconds, got {backoff!r}."
    )


def _check_deadline(deadline: object) -> float | None:
    if deadline is None:
        return None
    return to_seconds(
        deadline, "retry(deadline=...)", hint=" Leave it out (None) for no deadline."
    )


def _check_callable(argument: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise TypeError(
            f"retry({argument}=...) takes a callable or None, got "
            f"{type(value).__name__} {value!r}."
        )
    return value


def _check_logger(logger: object) -> logging.Logger | None:
    if logger is not None and not isinstance(logger, logging.Logger):
        raise TypeError(
            f"retry(logger=...) takes a logging.Logger or None, got {logger!r}: "
            'use logging.getLogger("name").'
        )
    return logger
