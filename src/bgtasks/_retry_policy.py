"""What ``retry`` knows and decides: its options, and each call's slow path.

`RetryPolicy` holds the options of one ``@retry(...)``, checked where it is
built (`RetryPolicy.from_options`), and never changes. `RetryRun` is created
per call at the first failure only, so the success path allocates nothing; it
keeps that call's attempt count, clock and previous delay, decides whether to
retry, and announces each retry (record, log, hook). A retry with no hook, no
recorder and a silenced logger allocates no event and formats nothing.
"""

from __future__ import annotations

import inspect
import logging
import math
import sys
import time
from collections.abc import Callable
from contextvars import Token
from dataclasses import dataclass
from typing import Any, cast, final

from . import _observe
from ._backoff import Backoff, fixed
from ._context import attempt_var, running_task_var
from ._testing import RetryRecorder, instant_var
from ._validate import check_int, to_seconds

__all__ = ["RetryEvent", "RetryPolicy", "RetryRun"]

_LOGGER = logging.getLogger("bgtasks")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryEvent:
    """A failed attempt that ``retry`` is about to retry, as ``on_retry`` gets it.

    Attributes:
        name: the retried function's qualified name.
        attempt: the number of the attempt that failed (1 for the first call).
        exception: what it raised, or ``None`` when ``retry_if`` rejected its
            result.
        result: the rejected result when ``retry_if`` asked for the retry, else
            ``None``.
        delay: seconds ``retry`` waits before the next attempt.
        elapsed: seconds spent so far, from the start of the call when
            ``deadline`` is set, else from the first failure (no clock is read
            on the success path).
    """

    name: str
    attempt: int
    exception: Exception | None
    result: Any = None
    delay: float
    elapsed: float


@final
class RetryPolicy:
    """The validated, immutable options of one ``@retry(...)``."""

    __slots__ = (
        "attempts",
        "backoff",
        "catch",
        "constant",
        "deadline",
        "logger",
        "on_retry",
        "predicate",
        "retry_if",
    )

    def __init__(
        self,
        *,
        attempts: int,
        catch: tuple[type[Exception], ...],
        predicate: Callable[[Exception], bool] | None,
        backoff: Callable[[int], float],
        deadline: float | None,
        retry_if: Callable[[Any], bool] | None,
        on_retry: Callable[[RetryEvent], object] | None,
        logger: logging.Logger | None,
    ) -> None:
        self.attempts = attempts
        self.catch = catch
        self.predicate = predicate
        self.backoff = backoff
        # A fixed delay needs no call per retry.
        self.constant = (
            backoff._constant()  # pyright: ignore[reportPrivateUsage]
            if isinstance(backoff, Backoff)
            else None
        )
        self.deadline = deadline
        self.retry_if = retry_if
        self.on_retry = on_retry
        self.logger = _LOGGER if logger is None else logger

    @classmethod
    def from_options(
        cls,
        *,
        on: object,
        attempts: object,
        backoff: object,
        deadline: object,
        retry_if: object,
        on_retry: object,
        logger: object,
    ) -> RetryPolicy:
        """Check every option of ``retry`` as the user passed it; build the policy.

        Each bad option fails here, when the decorator is built, with a
        ``TypeError`` or ``ValueError`` that names the argument and the fix,
        instead of surfacing at the first failure in production.
        """
        catch, predicate = _check_on(on)
        return cls(
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


@final
class RetryRun:
    """One call's retry state, from its first failure on."""

    __slots__ = (
        "attempt",
        "delay",
        "elapsed",
        "error",
        "logging",
        "name",
        "policy",
        "recorder",
        "result",
        "skipped",
        "start",
        "started",
        "task",
        "timed",
        "token",
    )

    def __init__(  # noqa: PLR0917 - built once per failing call: no options object
        self,
        policy: RetryPolicy,
        name: str,
        start: float | None,
        error: Exception | None,
        result: object,
        func: object,
    ) -> None:
        self.policy = policy
        self.name = name
        # When the call started (with a deadline), else the first failure: the
        # success path reads no clock, so next_retry reads it then.
        self.start = 0.0 if start is None else start
        self.started = start is not None
        self.attempt = 1
        self.error = error  # the last attempt's exception, or None
        self.result: Any = result  # its result, when error is None
        # The retry being made, set by next_retry: its wait (None before the
        # first, the previous one after) and the time so far.
        self.delay: float | None = None
        self.elapsed = 0.0
        self.recorder: RetryRecorder | None = instant_var.get()
        self.skipped = 0.0  # waits skipped under instant_retries count as slept
        # Read once: every attempt of this call runs in the task it started in.
        # Only the task's own retry layer (``func`` is what it wraps) reports
        # to it, not a retried helper the task calls.
        task = running_task_var.get()
        self.task = task if task is not None and task.owns_retry(func) else None
        # Read once too: a silenced logger costs no message, no extra, no record.
        self.logging = policy.logger.isEnabledFor(logging.WARNING)
        # Whether anything reads the time a retry happens at.
        self.timed = (
            self.logging
            or policy.deadline is not None
            or policy.on_retry is not None
            or self.recorder is not None
        )
        # attempt_var's first set: reset once, when the call ends (forget).
        self.token: Token[int] | None = None

    @property
    def instant(self) -> bool:
        """Whether waits are skipped (under ``bgtasks.testing.instant_retries``)."""
        return self.recorder is not None

    @property
    def event(self) -> RetryEvent:
        """The retry being made, as ``on_retry`` and the recorder see it.

        Built on demand: with no hook, no recorder and retry logging silenced, a
        retry allocates no event at all.
        """
        return RetryEvent(
            name=self.name,
            attempt=self.attempt,
            exception=self.error,
            result=self.result,
            delay=self.delay or 0.0,
            elapsed=self.elapsed,
        )

    def next_retry(self, clock: Callable[[], float]) -> float | None:
        """Decide whether to retry the failed attempt; ``None`` to give up.

        A retry is recorded (under ``instant_retries``), logged, and the
        managed task told when the next attempt starts; then the delay to wait
        is returned (0 under ``instant_retries``). Its event is built only for
        the recorder and the hook (:meth:`call_hook`). ``clock`` is read at the
        first failure, and after it only when something reads the time so far
        (a deadline, the log, the hook, the recorder): a loop's clock costs.
        """
        policy = self.policy
        if not self.started:
            self.start, self.started = clock(), True
            now = self.start
        else:
            # Untimed, elapsed is read by nothing: it stays 0 and no clock is read.
            now = clock() if self.timed else self.start
        if self.attempt >= policy.attempts:
            return None
        strategy = policy.backoff
        recorder = self.recorder
        if policy.constant is not None:
            delay = policy.constant
        elif isinstance(strategy, Backoff):
            jitter = recorder is None or recorder.jitter
            # Backoff's private protocol: built-ins get this call's previous delay.
            delay = strategy._next_delay(  # pyright: ignore[reportPrivateUsage]
                self.attempt, self.delay, jitter=jitter
            )
        else:
            delay = self._user_delay(strategy)
        elapsed = now - self.start + self.skipped
        if policy.deadline is not None and elapsed + delay > policy.deadline:
            return None
        self.delay = delay
        self.elapsed = elapsed
        if recorder is not None:
            recorder._record(self.event)  # pyright: ignore[reportPrivateUsage]
            self.skipped += delay
            delay = 0.0  # skipped, counted as slept
        if self.logging:
            self._log()
        if _observe.hook is not None:
            _observe.hook.retried(self.event)
        task = self.task
        if task is not None:
            task.record_retry_wait(time.time() + delay)
        return delay

    def _user_delay(self, strategy: Callable[[int], float]) -> float:
        delay = cast("object", strategy(self.attempt))  # user code: check it
        problem = (
            f"backoff {strategy!r} returned {delay!r} after attempt {self.attempt}"
        )
        if isinstance(delay, bool) or not isinstance(delay, (int, float)):
            raise TypeError(
                f"{problem} of {self.name}: it must return a number of seconds."
            ) from self.error
        if not 0 <= delay < math.inf:
            raise ValueError(
                f"{problem} of {self.name}: it must return a finite number of "
                "seconds >= 0."
            ) from self.error
        return float(delay)

    def call_hook(self) -> object:
        """Call ``on_retry`` with the retry; return what it returned, to await.

        A hook that raises is logged and the retry goes on: a bug in a hook must
        not replace the task's own exception nor stop its retries.
        """
        hook = self.policy.on_retry
        if hook is None:
            return None
        try:
            outcome = hook(self.event)
        except Exception:
            self.hook_failed()
            return None
        return outcome if inspect.isawaitable(outcome) else None

    def hook_failed(self) -> None:
        """Log the exception a hook raised (called inside the handler)."""
        self.policy.logger.exception(
            "bgtasks.retry: the on_retry hook of %s raised; retrying anyway",
            self.name,
            extra={"task_name": self.name, "attempt": self.attempt},
        )

    def _log(self) -> None:
        # The exception's type only: its message (like the arguments) may hold
        # an email or a token. An on_retry hook gets the exception itself.
        exception = self.error
        if exception is None:
            cause = "its result was rejected by retry_if"
        else:
            cause = type(exception).__qualname__
        self.policy.logger.warning(
            "bgtasks.retry: %s attempt %d failed (%s); retrying in %.3gs",
            self.name,
            self.attempt,
            cause,
            self.delay,
            extra={
                "task_name": self.name,
                "attempt": self.attempt,
                "delay": self.delay,
                "elapsed": self.elapsed,
            },
        )

    def next_attempt(self) -> None:
        """Start the next attempt: publish its number to the task and attempt_var.

        ``attempt_var`` keeps the number until the next attempt or the end of
        the call (:meth:`forget` resets it): one context change per attempt.
        """
        self.attempt += 1
        task = self.task
        if task is not None:
            task.record_attempt(self.attempt)
        token = attempt_var.set(self.attempt)
        if self.token is None:
            self.token = token

    def failed(self, exc: Exception) -> bool:
        """Keep the attempt's exception if it is retryable; ``False`` to re-raise it.

        Only ``Exception`` reaches here: the loops never catch cancellation.
        """
        policy = self.policy
        if not isinstance(exc, policy.catch) or (
            policy.predicate is not None and not policy.predicate(exc)
        ):
            return False
        self.error, self.result = exc, None
        return True

    def accepted(self, result: object) -> bool:
        """Keep the attempt's result; tell whether it is the call's outcome."""
        self.error, self.result = None, result
        retry_if = self.policy.retry_if
        return retry_if is None or not retry_if(result)

    def give_up(self, now: float) -> Any:
        """End the call: raise the last exception, or return the rejected result."""
        if self.error is None:
            self.give_up_result(now)
            return self.result
        raise self._final(now, self.error)

    def forget(self) -> None:
        """End the call: reset attempt_var, drop the last exception and result.

        Dropping them breaks exception -> traceback -> frame -> run cycles.
        """
        self.error = self.result = None
        if self.token is not None:
            attempt_var.reset(self.token)
            self.token = None

    def _final(self, now: float, exception: Exception) -> Exception:
        """Note on ``exception`` (3.11+) why it is final, and return it to re-raise."""
        if sys.version_info >= (3, 11):
            prefix = f"bgtasks.retry: gave up on {self.name} "
            notes = getattr(exception, "__notes__", None)
            if isinstance(notes, list):
                # The same object can fail the same function again (a cached
                # exception, nested retries): keep one note per function.
                notes[:] = [n for n in notes if not str(n).startswith(prefix)]
            if notes is None or isinstance(notes, list):  # else add_note would raise
                exception.add_note(prefix + self._why(now))
        return exception

    def give_up_result(self, now: float) -> None:
        """Log that the last result is returned although ``retry_if`` rejected it."""
        self.policy.logger.warning(
            "bgtasks.retry: gave up on %s %s; returning the last result",
            self.name,
            self._why(now),
            extra={
                "task_name": self.name,
                "attempt": self.attempt,
                "elapsed": now - self.start + self.skipped,
            },
        )

    def _why(self, now: float) -> str:
        count = f"{self.attempt} attempt{'s' if self.attempt != 1 else ''}"
        text = f"after {count} in {now - self.start + self.skipped:.3g}s"
        if self.policy.deadline is not None and self.attempt < self.policy.attempts:
            text += (
                f" (the next wait would end past the {self.policy.deadline:.3g}s "
                "deadline)"
            )
        return text
