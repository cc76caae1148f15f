"""The one switch through which an instrumentation (OpenTelemetry) watches bgtasks.

``hook`` is None unless ``bgtasks.otel.BgtasksInstrumentor`` is instrumenting:
every call site reads it once and tests ``is None``, so bgtasks without
instrumentation pays one global lookup per place, and never imports
opentelemetry. The manager and the decorators call the methods below; none
of them may raise into the task (the implementation guards itself).
"""

from __future__ import annotations

from contextvars import Context
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from ._retry_policy import RetryEvent

__all__ = ["IdempotencyOutcome", "Observer", "hook"]

# How one ``idempotent`` call went: its body ran ("miss"), a recorded outcome was
# replayed ("hit"), it waited for a running duplicate ("wait") or skipped one.
IdempotencyOutcome = Literal["hit", "miss", "wait", "skip"]


class Observer(Protocol):
    """What the manager and the decorators tell an instrumentation.

    ``record`` is the manager's ``TaskRecord`` (kept untyped here: this module
    sits below the manager).
    """

    def task_submitted(self, record: Any) -> None:
        """Note a task registered PENDING (called in the submitter's context)."""
        ...

    def task_started(self, record: Any) -> None:
        """Note a task gone RUNNING (in its own context, before its function)."""
        ...

    def task_ended(self, record: Any) -> None:
        """Note a RUNNING task's terminal state (in its context, lock not held).

        Called inside the ``except`` block for a failure or a cancellation, so
        ``sys.exc_info()`` is the exception.
        """
        ...

    def task_dropped(self, record: Any) -> None:
        """Note a PENDING task cancelled before it ran (manager lock held)."""
        ...

    def external_run(self, context: Context) -> None:
        """Note that Starlette now runs the ``add_task`` task of ``context``."""
        ...

    def retried(self, event: RetryEvent) -> None:
        """Note that ``retry`` will wait and retry after a failed attempt."""
        ...

    def timed_out(self, name: str, seconds: float) -> None:
        """Note that a ``timeout`` of ``seconds`` expired in ``name``."""
        ...

    def idempotency(self, name: str, outcome: IdempotencyOutcome) -> None:
        """Note how an ``idempotent`` call of ``name`` went."""
        ...

    def log_fields(self, fields: dict[str, Any]) -> None:
        """Add the current span's ids to a ``logged`` record's fields."""
        ...


# Set by BgtasksInstrumentor.instrument(), cleared by uninstrument().
hook: Observer | None = None
