"""Context variables through which the decorators and the TaskManager meet.

Decorators never import the manager: they read these variables, so each piece
works alone and they compose in any order.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol

__all__ = ["RunningTask", "attempt_var", "running_task_var"]


class RunningTask(Protocol):
    """What a decorator may ask of the managed task it runs inside."""

    @property
    def id(self) -> str:
        """The task's id, as the manager reports it."""
        ...

    def record_attempt(self, attempt: int) -> None:
        """Tell the manager that ``bgtasks.retry`` started attempt ``attempt``."""
        ...

    def record_retry_wait(self, until: float) -> None:
        """Tell the manager that ``bgtasks.retry`` waits until ``until``.

        ``until`` is a ``time.time()`` timestamp: when the next attempt starts.
        """
        ...


# Set by the TaskManager around the execution of each managed task.
running_task_var: ContextVar[RunningTask | None] = ContextVar(
    "bgtasks.running_task", default=None
)

# The retry attempt in progress. ``retry`` sets it only from the second attempt
# on, so the success path pays nothing; unset means attempt 1.
attempt_var: ContextVar[int] = ContextVar("bgtasks.attempt", default=1)
