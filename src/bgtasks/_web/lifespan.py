"""Tie a TaskManager to an ASGI app's lifespan, and find it again per request."""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, TypeVar, overload

from .._manager import TaskManager
from ..exceptions import ManagerNotRunningError
from .endpoints import check_manager

__all__ = ["STATE_KEY", "lifespan", "manager_from_app"]

AppT = TypeVar("AppT")
StateT = TypeVar("StateT")

# Attribute of ``app.state`` under which the lifespan publishes its manager.
STATE_KEY = "bgtasks_manager"


@overload
def lifespan(
    manager: TaskManager,
) -> Callable[[object], AbstractAsyncContextManager[None]]: ...
@overload
def lifespan(
    manager: TaskManager,
    app_lifespan: Callable[[AppT], AbstractAsyncContextManager[StateT]],
) -> Callable[[AppT], AbstractAsyncContextManager[StateT]]: ...
def lifespan(
    manager: TaskManager,
    app_lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """Build a lifespan that runs ``manager`` for as long as the app runs.

    ``FastAPI(lifespan=lifespan(manager))`` or ``Starlette(lifespan=...)``:
    the manager starts before the app takes requests, and at shutdown it
    drains running tasks for up to its ``drain_timeout``, then cancels the rest,
    so no task is left RUNNING or PENDING. The manager is also published as
    ``app.state.bgtasks_manager``, where the FastAPI dependency finds it.

    Args:
        manager: the application's task manager.
        app_lifespan: the app's own lifespan (an ``@asynccontextmanager``
            function), if it has one. It is entered first and left last, so the
            manager drains while the app's resources (database pools, HTTP
            clients) are still open. Whatever it yields (lifespan state) is
            passed on.

    Raises:
        TypeError: ``manager`` is not a TaskManager, or ``app_lifespan`` is not
            an ``@asynccontextmanager`` function.

    Example:
        ```python
        from starlette.applications import Starlette
        from bgtasks import TaskManager
        from bgtasks.starlette import lifespan

        manager = TaskManager()
        app = Starlette(lifespan=lifespan(manager))
        ```
    """
    check_manager(manager, "lifespan")
    if app_lifespan is not None:
        _check_app_lifespan(app_lifespan)

    @asynccontextmanager
    async def run_manager(app: Any) -> AsyncGenerator[Any, None]:
        if app_lifespan is None:
            async with manager:
                _publish(app, manager)
                yield None
        else:
            async with app_lifespan(app) as state, manager:
                _publish(app, manager)
                yield state

    return run_manager


def _check_app_lifespan(app_lifespan: object) -> None:
    if not callable(app_lifespan) or inspect.isasyncgenfunction(app_lifespan):
        raise TypeError(
            "app_lifespan must be an @contextlib.asynccontextmanager function taking "
            f"the app, got {app_lifespan!r}: decorate your lifespan function with "
            "@asynccontextmanager."
        )


def _publish(app: object, manager: TaskManager) -> None:
    state = getattr(app, "state", None)
    if state is not None:
        setattr(state, STATE_KEY, manager)


def manager_from_app(app: object) -> TaskManager:
    """Find the manager that :func:`lifespan` published on ``app.state``.

    Raises:
        ManagerNotRunningError: the app's lifespan is not bgtasks' (or has not
            run), so no manager was published.
    """
    manager = getattr(getattr(app, "state", None), STATE_KEY, None)
    if not isinstance(manager, TaskManager):
        raise ManagerNotRunningError(
            "no TaskManager found on app.state: build the app with "
            "lifespan=bgtasks.starlette.lifespan(manager), or pass the manager "
            "explicitly, e.g. tracked_tasks(manager)."
        )
    return manager
