"""``current_task()``: what a running task can tell its manager about itself.

``TaskContext`` lives here, in the manager package, not beside the context
variables in ``bgtasks._context``: that module is what the decorators see of
a running task, and must not import the manager; a TaskContext is a view of
the manager's own record.
"""

from __future__ import annotations

import math
from typing import cast

from .._context import running_task_var
from ..exceptions import NoCurrentTaskError
from .records import RecordView, TaskRecord

__all__ = ["TaskContext", "current_task"]


class TaskContext(RecordView):
    """The running task, as seen from inside it (returned by ``current_task()``).

    Safe to use from the task's worker thread: sync tasks report progress from
    there.
    """

    __slots__ = ()

    @property
    def name(self) -> str:
        """The task function's qualified name."""
        return self._record.name

    @property
    def attempt(self) -> int:
        """1, or the attempt ``bgtasks.retry`` reported."""
        return self._record.attempt

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this task.

        Sync tasks should stop soon after: call ``bgtasks.checkpoint()``, which
        raises the cancellation, or return early.
        """
        return self._record.cancel_requested

    def set_progress(self, fraction: float, message: str | None = None) -> None:
        """Report how far the task is; ``manager.get(...)`` shows it.

        Thread-safe: fraction and message are replaced together, atomically.

        Args:
            fraction: from 0.0 (nothing done) to 1.0 (all done).
            message: a short human-readable note, e.g. ``"rendering charts"``.

        Raises:
            TypeError: ``fraction`` is not a number or ``message`` not a string.
            ValueError: ``fraction`` is outside 0.0 to 1.0 (or NaN).
        """
        value = cast("object", fraction)  # checked at run time: callers may be untyped
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(
                f"set_progress() takes a fraction from 0.0 to 1.0, got "
                f"{type(fraction).__name__} {fraction!r}."
            )
        if math.isnan(fraction) or not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"set_progress() takes a fraction from 0.0 to 1.0, got {fraction!r}; "
                "divide by the total (e.g. done / total)."
            )
        text = cast("object", message)
        if text is not None and not isinstance(text, str):
            raise TypeError(
                f"set_progress(message=...) must be a string or None, got "
                f"{type(message).__name__}."
            )
        record = self._record
        if not record.state.is_finished:  # a finished task's snapshot stays put
            record.progress = (float(fraction), message)
            link = record.engine.link
            if link is not None:
                fields = {"progress": float(fraction), "message": message}
                link.push(record.id, fields, False, True)

    def record_attempt(self, attempt: int) -> None:
        """Record the attempt number ``bgtasks.retry`` is starting."""
        self._record.record_attempt(attempt)


def current_task() -> TaskContext:
    """Return the managed task that is running this code.

    Works in ``async def`` tasks and in sync tasks' worker threads, for tasks
    started with ``TaskManager.spawn`` or ``TaskManager.add_task``.

    Raises:
        NoCurrentTaskError: called outside a task run by a TaskManager.

    Example:
        ```python
        async def generate_report(user_id: int) -> dict[str, int]:
            current_task().set_progress(0.5, message="rendering charts")
            return {"user_id": user_id}
        ```
    """
    task = running_task_var.get()
    if not isinstance(task, TaskRecord):
        raise NoCurrentTaskError(
            "current_task() was called outside a task run by a TaskManager. Call "
            "it inside a function started with manager.spawn(...) or "
            "manager.add_task(...); to test such a function alone, run it "
            "through a TaskManager too."
        )
    return TaskContext(task)
