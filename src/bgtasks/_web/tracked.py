"""A request's BackgroundTasks whose ``add_task`` tracks the task, returns a handle."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar, overload

from starlette.background import BackgroundTasks
from typing_extensions import ParamSpec

from .._manager import TaskManager
from .._manager.handle import TaskHandle
from .endpoints import check_manager

__all__ = ["TrackedBackgroundTasks"]

P = ParamSpec("P")
T = TypeVar("T")


class TrackedBackgroundTasks:
    """The tracked view of one request's ``BackgroundTasks``.

    ``add_task`` has the signature of ``BackgroundTasks.add_task`` but records
    the task in the manager (PENDING at once) and returns its
    :class:`~bgtasks.TaskHandle`; ``add_task_with_id`` chooses the id. The
    task still runs when Starlette runs the request's background tasks, after
    the response, in the order added, together with the untracked tasks of
    the same ``BackgroundTasks``.

    Args:
        manager: the application's task manager.
        background_tasks: the request's ``BackgroundTasks``; a new one if
            omitted (Starlette: pass ``tasks.background_tasks`` as the
            response's ``background=``).

    Example:
        ```python
        from bgtasks import TaskManager
        from bgtasks.starlette import TrackedBackgroundTasks

        tasks = TrackedBackgroundTasks(TaskManager())
        assert tasks.background_tasks.tasks == []
        ```
    """

    __slots__ = ("background_tasks", "manager")

    def __init__(
        self, manager: TaskManager, background_tasks: BackgroundTasks | None = None
    ) -> None:
        self.manager = check_manager(manager, "TrackedBackgroundTasks")
        self.background_tasks = (
            BackgroundTasks() if background_tasks is None else background_tasks
        )

    @overload
    def add_task(
        self,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def add_task(
        self, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    def add_task(
        self, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskHandle[Any]:
        """Add ``func(*args, **kwargs)`` as a tracked task (arguments type-checked).

        Raises:
            ManagerNotRunningError: the manager is not running.
        """
        return self.manager.add_task(self.background_tasks, func, *args, **kwargs)

    @overload
    def add_task_with_id(
        self,
        task_id: str,
        func: Callable[P, Coroutine[Any, Any, T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> TaskHandle[T]: ...
    @overload
    def add_task_with_id(
        self, task_id: str, func: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> TaskHandle[T]: ...
    def add_task_with_id(
        self, task_id: str, func: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> TaskHandle[Any]:
        """:meth:`add_task`, with the task's id chosen by the caller.

        Raises:
            ManagerNotRunningError: the manager is not running.
            TaskAlreadyExistsError: ``task_id`` belongs to an active task.
            ValueError: ``task_id`` is malformed.
        """
        return self.manager.add_task_with_id(
            self.background_tasks, task_id, func, *args, **kwargs
        )

    def __repr__(self) -> str:
        return f"<TrackedBackgroundTasks of {len(self.background_tasks.tasks)} tasks>"
