"""Test helpers: instant retries with a record of them, and a clean idempotency store.

The switch is a context variable, not a global: it covers the code run in the
``with`` block, the tasks it starts and the worker threads anyio or Starlette
send work to (both copy the context), and nothing else, so tests that run at
the same time, in threads or tasks, do not see each other's setting.
"""

from __future__ import annotations

import threading
from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, final

from ._idempotency.decorator import default_store
from ._idempotency.stores import MemoryStore

if TYPE_CHECKING:
    from ._retry_policy import RetryEvent

__all__ = ["RetryRecorder", "fresh_idempotency_store", "instant_retries", "instant_var"]


@final
class RetryRecorder:
    """What ``bgtasks.retry`` did under `instant_retries`: one event per retry.

    Each event is the `bgtasks.RetryEvent` an ``on_retry`` hook would get for a
    failed attempt that is followed by another: the function's qualified name,
    the attempt that failed, its exception (or rejected result), the delay that
    would have been slept and the elapsed time (waits count as if slept). The
    last attempt of a call that gives up is not a retry: it is not recorded.
    """

    __slots__ = ("_events", "_lock", "jitter")

    def __init__(self, *, jitter: bool = False) -> None:
        self.jitter = jitter
        self._events: list[RetryEvent] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RetryRecorder events={len(self._events)} jitter={self.jitter}>"

    @property
    def events(self) -> list[RetryEvent]:
        """A copy of the events recorded so far, in the order they happened."""
        with self._lock:
            return list(self._events)

    @property
    def delays(self) -> list[float]:
        """The delays that would have been slept, in order."""
        return [event.delay for event in self.events]

    @property
    def attempts(self) -> list[int]:
        """The numbers of the attempts that failed and were retried, in order."""
        return [event.attempt for event in self.events]

    def clear(self) -> None:
        """Forget the events recorded so far."""
        with self._lock:
            self._events.clear()

    def _record(self, event: RetryEvent) -> None:
        with self._lock:
            self._events.append(event)


# Read by retry's slow path only, after a failure: the success path never looks.
instant_var: ContextVar[RetryRecorder | None] = ContextVar(
    "bgtasks.instant_retries", default=None
)


@contextmanager
def instant_retries(*, jitter: bool = False) -> Generator[RetryRecorder, None, None]:
    """Make every ``bgtasks.retry`` wait zero seconds and record each retry.

    Within the block, and in the tasks and worker threads it starts, retried
    functions skip their waits (async ones still pass a cancellation point)
    while everything else behaves as in production: attempts, ``on`` filters,
    hooks, logging, and ``deadline`` (skipped waits count as if slept). Blocks
    nest; the innermost one records.

    Args:
        jitter: by default the built-in backoffs skip their random part, so the
            recorded delays are exact and tests can assert them:
            ``exponential(initial=0.1)`` records ``0.1, 0.2, 0.4``. Pass
            ``jitter=True`` to record the jittered delays production would use.
            Custom backoff callables are called as usual either way.

    Yields:
        The `RetryRecorder` that collects one event per retry.

    Examples:
        >>> from bgtasks import retry
        >>> calls = []
        >>> @retry(attempts=3)
        ... def flaky() -> str:
        ...     calls.append(1)
        ...     if len(calls) < 3:
        ...         raise ConnectionError("refused")
        ...     return "ok"
        >>> with instant_retries() as recorder:
        ...     flaky()
        'ok'
        >>> recorder.delays
        [0.1, 0.2]
    """
    recorder = RetryRecorder(jitter=jitter)
    token = instant_var.set(recorder)
    try:
        yield recorder
    finally:
        instant_var.reset(token)


@contextmanager
def fresh_idempotency_store() -> Generator[MemoryStore, None, None]:
    """Start and end with an empty default idempotency store; yield it.

    ``@idempotent`` without ``store=`` records into one process-wide
    `MemoryStore`, so a key completed by one test would make the next test's
    call a replay. Use this (or the ``idempotency_store`` pytest fixture)
    around each test that calls such functions.
    """
    store = default_store()
    store.clear()
    try:
        yield store
    finally:
        store.clear()
