"""Context variables through which the decorators and the TaskManager meet.

Decorators never import the manager: they read these variables, so each piece
works alone and they compose in any order.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, Literal, Protocol

__all__ = [
    "IDEMPOTENT_MARKER",
    "LOGGED_MARKER",
    "RETRY_MARKER",
    "DuplicateOutcome",
    "RunningTask",
    "attempt_var",
    "outcome_var",
    "report_outcome",
    "running_task_var",
]


class RunningTask(Protocol):
    """What a decorator may ask of the managed task it runs inside."""

    @property
    def id(self) -> str:
        """The task's id, as the manager reports it."""
        ...

    def owns_retry(self, func: object) -> bool:
        """Tell whether the ``bgtasks.retry`` layer around ``func`` is the task's.

        Only the outermost retry layer of the task's own function reports its
        attempts and waits (``RETRY_MARKER`` names it): a retried helper the
        task's body calls leaves the task's attempt alone.
        """
        ...

    def record_attempt(self, attempt: int) -> None:
        """Tell the manager that ``bgtasks.retry`` started attempt ``attempt``."""
        ...

    def record_retry_wait(self, until: float) -> None:
        """Tell the manager that ``bgtasks.retry`` waits until ``until``.

        ``until`` is the ``time.time()`` at which the next attempt starts; the
        manager forgets it at the next ``record_attempt`` or when the task ends.
        """
        ...


# An attribute set (to True) on every ``logged`` wrapper, and copied by the
# decorators above it: the TaskManager does not log a failure such a function
# has logged already, so one failure makes one ERROR record.
LOGGED_MARKER = "__bgtasks_logged__"

# Set on every ``retry`` wrapper to the function it wraps, and copied by the
# decorators above it (the outermost retry's wins): a managed task's attempt and
# next attempt time are its own retry layer's, never those of a helper it calls.
RETRY_MARKER = "__bgtasks_retry__"

# Set by the TaskManager around the execution of each managed task.
running_task_var: ContextVar[RunningTask | None] = ContextVar(
    "bgtasks.running_task", default=None
)

# The retry attempt in progress. ``retry`` sets it only from the second attempt
# on, so the success path pays nothing; unset means attempt 1.
attempt_var: ContextVar[int] = ContextVar("bgtasks.attempt", default=1)

# How an ``idempotent`` call ended without running its body.
DuplicateOutcome = Literal["replayed", "waited", "skipped"]

# An attribute of every ``idempotent`` wrapper (copied upward like the one
# above): a function that makes it report its outcomes through outcome_var.
# ``logged`` calls it at decoration, so functions without ``logged`` above
# their ``idempotent`` pay nothing on a hit.
IDEMPOTENT_MARKER = "__bgtasks_idempotent__"

# The fields of the ``logged`` call in progress, set by a ``logged`` wrapping an
# ``idempotent`` function; ``idempotent`` writes ``"outcome"`` there when its
# call replayed, waited or skipped, and removes it when the body ran.
outcome_var: ContextVar[dict[str, Any] | None] = ContextVar(
    "bgtasks.outcome", default=None
)


def report_outcome(outcome: DuplicateOutcome | None) -> None:
    """Tell the ``logged`` call around, if any, how the idempotent call ended."""
    slot = outcome_var.get()
    if slot is not None:
        if outcome is None:
            slot.pop("outcome", None)
        else:
            slot["outcome"] = outcome
