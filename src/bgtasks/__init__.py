"""bgtasks: production-grade background tasks for Starlette and FastAPI.

Decorators for task functions (``logged``, ``retry``, ``timeout``,
``idempotent``) that keep sync functions sync and async functions async, and a
``TaskManager`` that tracks tasks with ids, status, result, progress and cancel.
"""

from __future__ import annotations

from importlib.metadata import version as _version

from . import backoff as backoff
from . import exceptions as exceptions
from ._idempotency.decorator import idempotent as idempotent
from ._idempotency.stores import ClaimResult as ClaimResult
from ._idempotency.stores import IdempotencyRecord as IdempotencyRecord
from ._idempotency.stores import IdempotencyStore as IdempotencyStore
from ._idempotency.stores import MemoryStore as MemoryStore
from ._logged import logged as logged
from ._manager import TaskContext as TaskContext
from ._manager import TaskManager as TaskManager
from ._manager import current_task as current_task
from ._manager.events import TaskEvent as TaskEvent
from ._manager.handle import TaskHandle as TaskHandle
from ._manager.paging import TaskList as TaskList
from ._manager.records import TaskError as TaskError
from ._manager.records import TaskInfo as TaskInfo
from ._manager.records import TaskState as TaskState
from ._retry import RetryEvent as RetryEvent
from ._retry import retry as retry
from ._timeout import checkpoint as checkpoint
from ._timeout import remaining as remaining
from ._timeout import timeout as timeout

__version__ = _version("bgtasks")

__all__ = [
    "ClaimResult",
    "IdempotencyRecord",
    "IdempotencyStore",
    "MemoryStore",
    "RetryEvent",
    "TaskContext",
    "TaskError",
    "TaskEvent",
    "TaskHandle",
    "TaskInfo",
    "TaskList",
    "TaskManager",
    "TaskState",
    "__version__",
    "backoff",
    "checkpoint",
    "current_task",
    "exceptions",
    "idempotent",
    "logged",
    "remaining",
    "retry",
    "timeout",
]
