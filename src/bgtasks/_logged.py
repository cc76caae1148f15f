"""``logged``: a start, success and failure record for each call of a task.

Records go to the stdlib logger ``bgtasks`` (or the one given) with structured
fields in ``extra``, so JSON formatters and structlog's stdlib integration see
them. Argument values are logged only on request: background tasks carry
emails, tokens and personal data.
"""

from __future__ import annotations

import inspect
import logging
import reprlib
import sys
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Coroutine,
    Iterable,
    Mapping,
)
from time import perf_counter
from typing import Any, Literal, Protocol, TypeVar, cast, overload

from typing_extensions import ParamSpec

from . import _observe
from ._context import (
    IDEMPOTENT_MARKER,
    LOGGED_MARKER,
    attempt_var,
    outcome_var,
    running_task_var,
)
from ._wrap import callable_name, check_decoratable, wrap_same_kind

__all__ = ["LoggedDecorator", "SuppressingLoggedDecorator", "logged"]

P = ParamSpec("P")
T = TypeVar("T")

REDACTED = "***"

# Argument reprs are cut short: a task may receive a whole file's bytes.
_arg_repr = reprlib.Repr()
_arg_repr.maxstring = 200
_arg_repr.maxother = 200


class LoggedDecorator(Protocol):
    """What ``logged(...)`` returns: keeps parameters, return type and kind."""

    def __call__(self, func: Callable[P, T], /) -> Callable[P, T]: ...


class SuppressingLoggedDecorator(Protocol):
    """What ``logged(suppress=True)`` returns: the result may now be ``None``."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, T]], /
    ) -> Callable[P, Coroutine[Any, Any, T | None]]: ...
    @overload
    def __call__(self, func: Callable[P, T], /) -> Callable[P, T | None]: ...


@overload
def logged(func: Callable[P, T], /) -> Callable[P, T]: ...
@overload
def logged(
    *,
    logger: logging.Logger | str | None = None,
    level: int | str = logging.INFO,
    log_args: bool = False,
    redact: Collection[str] = (),
    suppress: Literal[False] = False,
) -> LoggedDecorator: ...
@overload
def logged(
    *,
    logger: logging.Logger | str | None = None,
    level: int | str = logging.INFO,
    log_args: bool = False,
    redact: Collection[str] = (),
    suppress: bool,
) -> SuppressingLoggedDecorator: ...
def logged(
    func: Callable[..., Any] | None = None,
    /,
    *,
    logger: logging.Logger | str | None = None,
    level: int | str = logging.INFO,
    log_args: bool = False,
    redact: Collection[str] = (),
    suppress: bool = False,
) -> Any:
    """Log the start, the success and the failure of each call.

    Use it bare (``@logged``) or with options (``@logged(level="DEBUG")``).
    Each call logs a start record and a success record (with its duration) at
    ``level``, or a failure record at ERROR with the traceback. A cancellation
    (any ``BaseException`` that is not an ``Exception``) is logged at ``level``
    without a traceback and always re-raised.

    Every record carries in ``extra``: ``task_name`` (the function's qualified
    name), ``task_id`` (the ``TaskManager`` id, or ``None``), ``attempt`` (the
    ``retry`` attempt, 1 outside ``retry``); the records at the end add
    ``duration`` (seconds) and ``outcome`` (``"succeeded"``, ``"failed"`` or
    ``"cancelled"``), and the failure record ``error_type`` (the exception's
    class name); with ``log_args``, ``task_args`` maps names to reprs. A
    ``TaskManager`` running a ``logged`` function leaves the failure to this
    record instead of logging its own.

    Args:
        func: the function, when used bare as ``@logged``.
        logger: a ``logging.Logger`` or a logger name; default ``"bgtasks"``.
        level: the level of the start, success and cancellation records, as a
            number or a name (``"DEBUG"``); default INFO.
        log_args: log the arguments' reprs (bound to their parameter names)
            with the start record. Off by default: arguments of background
            tasks often carry personal data and secrets.
        redact: names of arguments (or of ``**kwargs`` keys) whose values are
            logged as ``"***"``; needs ``log_args=True``.
        suppress: after logging a failure, return ``None`` instead of raising.
            Starlette stops a response's remaining background tasks at the
            first one that raises; this lets the others run. Only
            ``Exception`` is suppressed, never a cancellation.

    Raises:
        TypeError: an option has the wrong type, or ``func`` is not a function.
        ValueError: ``level`` is an unknown name, ``redact`` is given without
            ``log_args=True``, or names an argument the function does not have.

    Examples:
        >>> from bgtasks import logged
        >>> @logged
        ... async def send_welcome_email(email: str) -> None: ...
    """
    target = _resolve_logger(logger)
    levelno = _check_level(level)
    hidden = _check_redact(redact, log_args=log_args)

    def decorate(func: Callable[..., Any], /) -> Callable[..., Any]:
        signature = None
        if log_args:
            check_decoratable(func, "logged")  # before inspect.signature trips on it
            signature = _signature_for(func, hidden)
        # An idempotent function below reports its replays, waits and skips.
        start_reporting = getattr(func, IDEMPOTENT_MARKER, None)
        if start_reporting is not None:
            start_reporting()
        call = _Call(
            target,
            levelno,
            callable_name(func),
            signature=signature,
            hidden=hidden,
            suppress=suppress,
            hears_outcomes=start_reporting is not None,
        )
        wrapper = wrap_same_kind(
            func, "logged", sync=call.make_sync, async_=call.make_async
        )
        # The TaskManager skips its own failure record for a function that
        # logs its failures itself; decorators above copy __dict__, so keep it.
        wrapper.__dict__[LOGGED_MARKER] = True
        return wrapper

    return decorate if func is None else decorate(func)


def _resolve_logger(logger: object) -> logging.Logger:
    if logger is None:
        return logging.getLogger("bgtasks")
    if isinstance(logger, str):
        return logging.getLogger(logger)
    if isinstance(logger, logging.Logger):
        return logger
    raise TypeError(
        f"logged(logger=...) takes a logging.Logger or a logger name, got "
        f"{type(logger).__name__} {logger!r}."
    )


def _check_level(level: object) -> int:
    if isinstance(level, str):
        number = _level_names().get(level.upper())
        if number is not None:
            return number
        raise ValueError(
            f"logged(level=...) got an unknown level name {level!r}: use "
            "logging.DEBUG, logging.INFO or a name such as 'DEBUG'."
        )
    if isinstance(level, int) and not isinstance(level, bool):
        return level
    raise TypeError(
        f"logged(level=...) takes a level number or name, got "
        f"{type(level).__name__} {level!r}: use e.g. logging.DEBUG or 'DEBUG'."
    )


def _level_names() -> Mapping[str, int]:
    if sys.version_info >= (3, 11):
        return logging.getLevelNamesMapping()
    # Python 3.10 has no public name-to-level mapping.
    return logging._nameToLevel  # pragma: no cover  # pyright: ignore[reportPrivateUsage]


def _check_redact(redact: object, *, log_args: bool) -> frozenset[str]:
    if isinstance(redact, str) or not isinstance(redact, Iterable):
        raise TypeError(
            f"logged(redact=...) takes a collection of argument names, got "
            f"{redact!r}: write redact=('password',)."
        )
    names: set[str] = set()
    for name in cast("Iterable[object]", redact):
        if not isinstance(name, str):
            raise TypeError(
                f"logged(redact=...) takes argument names (str), got {name!r}."
            )
        names.add(name)
    if names and not log_args:
        raise ValueError(
            "logged(redact=...) only applies to logged arguments, which are off by "
            "default: add log_args=True, or drop redact."
        )
    return frozenset(names)


def _signature_for(
    func: Callable[..., Any], hidden: frozenset[str]
) -> inspect.Signature:
    signature = inspect.signature(func)
    params = signature.parameters
    takes_any_keyword = any(p.kind is p.VAR_KEYWORD for p in params.values())
    unknown = sorted(hidden - params.keys())
    if unknown and not takes_any_keyword:
        raise ValueError(
            f"logged(redact=...) names {unknown} but {callable_name(func)} has no such "
            f"parameter (it takes {list(params)}): fix the spelling, or a value "
            "meant to be hidden would be logged."
        )
    return signature


# The end record's message per outcome; all but "succeeded" come from idempotent.
_END_MESSAGES = {
    "succeeded": "%s succeeded in %.3f s",
    "replayed": "%s replayed the recorded result of its idempotency key in %.3f s",
    "waited": "%s waited for the running call of its idempotency key and got its "
    "result in %.3f s",
    "skipped": "%s skipped: its idempotency key was running elsewhere (%.3f s)",
}


class _Call:
    """The logging around one decorated function; its wrappers share it."""

    __slots__ = (
        "hears_outcomes",
        "hidden",
        "level",
        "logger",
        "name",
        "signature",
        "suppress",
    )

    def __init__(
        self,
        logger: logging.Logger,
        level: int,
        name: str,
        *,
        signature: inspect.Signature | None,
        hidden: frozenset[str],
        suppress: bool,
        hears_outcomes: bool = False,
    ) -> None:
        self.hears_outcomes = hears_outcomes
        self.logger = logger
        self.level = level
        self.name = name
        self.signature = signature
        self.hidden = hidden
        self.suppress = suppress

    def make_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            fields = self.started(args, kwargs)
            start = perf_counter()
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                if self.raised(fields, start, exc):
                    return None
                raise
            return result if fields is None else self.succeeded(fields, start, result)

        return wrapper

    def make_async(
        self, func: Callable[..., Awaitable[Any]]
    ) -> Callable[..., Awaitable[Any]]:
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            fields = self.started(args, kwargs)
            start = perf_counter()
            try:
                result = await func(*args, **kwargs)
            except BaseException as exc:
                if self.raised(fields, start, exc):
                    return None
                raise
            return result if fields is None else self.succeeded(fields, start, result)

        return wrapper

    def started(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Log the start; return the record fields, or None if ``level`` is off."""
        if not self.logger.isEnabledFor(self.level):
            return None
        fields = self.fields()
        if self.hears_outcomes:
            # Not reset after the call: idempotent reads it before any code it
            # runs could set another, and an ended call's dict is never read.
            outcome_var.set(fields)
        if self.signature is None:
            self.logger.log(self.level, "%s started", self.name, extra=fields)
            return fields
        shown = self.arguments(self.signature, args, kwargs)
        if shown is None:  # the call itself is about to fail and say why
            shown, listed = {}, "arguments that do not fit its signature"
        else:
            listed = ", ".join(f"{name}={value}" for name, value in shown.items())
            listed = listed or "no arguments"
        self.logger.log(
            self.level,
            "%s started with %s",
            self.name,
            listed,
            extra={**fields, "task_args": shown},
        )
        return fields

    def raised(
        self, fields: dict[str, Any] | None, start: float, exc: BaseException
    ) -> bool:
        """Log a failure or a cancellation; return whether to return None instead."""
        duration = perf_counter() - start
        if isinstance(exc, Exception):
            self.failed(fields, duration, exc)
            return self.suppress  # only an Exception, never a cancellation
        self.cancelled(fields, duration, exc)
        return False

    def succeeded(self, fields: dict[str, Any], start: float, result: T) -> T:
        """Log the success (or a duplicate's outcome); return ``result``."""
        duration = perf_counter() - start
        outcome = fields.pop("outcome", "succeeded")
        self.logger.log(
            self.level,
            _END_MESSAGES[outcome],
            self.name,
            duration,
            extra={**fields, "duration": duration, "outcome": outcome},
        )
        return result

    def failed(
        self, fields: dict[str, Any] | None, duration: float, exc: Exception
    ) -> None:
        error_type = type(exc).__qualname__
        if fields is not None and fields.pop("outcome", None) == "replayed":
            # The real failure was logged when it happened; this is its copy.
            self.logger.log(
                self.level,
                "%s replayed the recorded error %s of its idempotency key in %.3f s",
                self.name,
                error_type,
                duration,
                extra={
                    **fields,
                    "duration": duration,
                    "outcome": "replayed",
                    "error_type": error_type,
                },
            )
            return
        if not self.logger.isEnabledFor(logging.ERROR):
            return
        self.logger.error(
            "%s failed after %.3f s with %s%s",
            self.name,
            duration,
            error_type,
            " (suppressed: returning None)" if self.suppress else "",
            exc_info=True,
            extra={
                **(fields or self.fields()),
                "duration": duration,
                "outcome": "failed",
                "error_type": error_type,
            },
        )

    def cancelled(
        self, fields: dict[str, Any] | None, duration: float, exc: BaseException
    ) -> None:
        if fields is None:
            return  # ``level`` is off
        self.logger.log(
            self.level,
            "%s cancelled after %.3f s (%s)",
            self.name,
            duration,
            type(exc).__name__,
            extra={**fields, "duration": duration, "outcome": "cancelled"},
        )

    def fields(self) -> dict[str, Any]:
        task = running_task_var.get()
        fields = {
            "task_name": self.name,
            "task_id": None if task is None else task.id,
            "attempt": attempt_var.get(),
        }
        if _observe.hook is not None:
            _observe.hook.log_fields(fields)  # trace_id and span_id: logs join traces
        return fields

    def arguments(
        self,
        signature: inspect.Signature,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> dict[str, str] | None:
        """Map parameter names and ``**kwargs`` keys to reprs, hiding redacted ones.

        Returns ``None`` when the arguments do not bind to the signature.
        """
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError:
            return None
        shown: dict[str, str] = {}
        for name, value in bound.arguments.items():
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                for key, item in value.items():
                    shown[key] = self.show(key, item)
            else:
                shown[name] = self.show(name, value)
        return shown

    def show(self, name: str, value: object) -> str:
        return REDACTED if name in self.hidden else _arg_repr.repr(value)
