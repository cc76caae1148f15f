"""The TaskManager: tracked tasks with ids, states, progress, cancel, retention.

- ``manager``: the public ``TaskManager``, a thin layer over the engine;
- ``engine``: registration, launch, execution and state transitions;
- ``records``: task states, snapshots (``TaskInfo``) and the mutable record;
- ``registry``, ``slots``: retention, and ``max_concurrency``'s run slots;
- ``events``: subscribers; ``submit``: checking submissions, capturing context;
- ``background``: the wrapper ``add_task`` hands to ``BackgroundTasks``;
- ``current``: ``current_task()``, what a running task sees of itself.
"""

from .current import TaskContext as TaskContext
from .current import current_task as current_task
from .manager import TaskManager as TaskManager

__all__ = ["TaskContext", "TaskManager", "current_task"]
