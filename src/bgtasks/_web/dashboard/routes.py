"""The dashboard as a Starlette ``Router``, to mount at any prefix."""

from __future__ import annotations

from typing import cast

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router

from ..._manager import TaskManager
from ..endpoints import check_manager
from .endpoints import Dashboard
from .source import TaskSource

__all__ = ["build_dashboard", "dashboard_router"]


def build_dashboard(
    manager: TaskManager, factory: str, *, expose_error_messages: bool
) -> Dashboard:
    """Check the arguments once, for both frameworks' factories.

    Raises:
        TypeError: ``manager`` is not a TaskManager, or the flag not a bool.
    """
    check_manager(manager, factory)
    flag = cast("object", expose_error_messages)  # checked at run time: a common slip
    if not isinstance(flag, bool):
        raise TypeError(
            f"{factory}(expose_error_messages=...) must be True or False, got "
            f"{type(expose_error_messages).__name__}."
        )
    return Dashboard(TaskSource(manager), expose_error_messages=expose_error_messages)


def dashboard_router(
    manager: TaskManager, *, expose_error_messages: bool = False
) -> Router:
    """Build the task dashboard as a Starlette ``Router``.

    Mount it where it should live, behind the app's authentication:
    ``Mount("/dashboard", app=dashboard_router(manager), middleware=[...])``.
    It serves the page at ``/`` and, under the same prefix, its CSS and JS,
    the JSON it reads (``api/tasks``, ``api/tasks/{id}``, ``api/stats``), the
    cancel action (``POST api/tasks/{id}/cancel``) and a live event stream
    (``api/events``). It needs no ``task_router``.

    Args:
        manager: the application's task manager.
        expose_error_messages: show failed tasks' exception messages. Off by
            default: messages can carry personal data or secrets, so only
            the exception type is shown. Tracebacks never are.

    Raises:
        TypeError: ``manager`` is not a TaskManager, or the flag not a bool.
    """
    dashboard = build_dashboard(
        manager, "dashboard_router", expose_error_messages=expose_error_messages
    )

    async def asset(request: Request) -> Response:
        return await dashboard.asset(request, request.path_params["name"])

    async def task(request: Request) -> Response:
        return await dashboard.task(request, request.path_params["task_id"])

    async def cancel(request: Request) -> Response:
        return await dashboard.cancel(request, request.path_params["task_id"])

    return Router(
        routes=[
            Route("/", dashboard.page, methods=["GET"], name="bgtasks_dashboard"),
            Route("/static/{name}", asset, methods=["GET"]),
            Route("/api/tasks", dashboard.tasks, methods=["GET"]),
            Route("/api/tasks/{task_id}", task, methods=["GET"]),
            Route("/api/tasks/{task_id}/cancel", cancel, methods=["POST"]),
            Route("/api/stats", dashboard.stats, methods=["GET"]),
            Route("/api/events", dashboard.events, methods=["GET"]),
        ]
    )
