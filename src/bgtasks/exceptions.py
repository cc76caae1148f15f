"""Exceptions raised by bgtasks; all subclass :class:`BgTasksError`.

Where a bgtasks error is also a standard kind of error (a lookup, a bad runtime
state), it subclasses that builtin too, so ``except LookupError`` keeps working.
Bad arguments at decoration or construction time raise the builtin
``TypeError`` / ``ValueError`` with a message naming the argument and the fix.
"""

from __future__ import annotations

__all__ = [
    "BgTasksError",
    "DuplicateTaskError",
    "IdempotencyConflictError",
    "ManagerNotRunningError",
    "NoCurrentTaskError",
    "TaskAlreadyExistsError",
    "TaskNotFoundError",
]


class BgTasksError(Exception):
    """Base class of every exception bgtasks raises on purpose."""


class TaskAlreadyExistsError(BgTasksError):
    """A task id given with ``_task_id=`` belongs to a task that is still active."""


class TaskNotFoundError(BgTasksError, LookupError):
    """No task with this id is known to the manager (never existed, or dropped)."""


class ManagerNotRunningError(BgTasksError, RuntimeError):
    """The TaskManager was used before ``async with manager`` or after it closed."""


class NoCurrentTaskError(BgTasksError, RuntimeError):
    """``current_task()`` was called outside a task run by a TaskManager."""


class DuplicateTaskError(BgTasksError):
    """An idempotent call found its key already claimed by a running call.

    Raised with ``on_duplicate="raise"``, or when a bounded wait for the first
    call runs out.
    """


class IdempotencyConflictError(BgTasksError):
    """An idempotency key was reused with different arguments.

    Raised when argument fingerprinting is on, instead of silently returning the
    result of a call made with other arguments.
    """
