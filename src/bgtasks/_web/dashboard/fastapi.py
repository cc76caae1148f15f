"""The dashboard as a FastAPI ``APIRouter``, guarded by the app's dependencies.

No ``from __future__ import annotations``: FastAPI reads the endpoints'
annotations at run time.
"""

from collections.abc import Sequence

from fastapi import APIRouter, Request, params
from starlette.responses import Response

from ..._manager import TaskManager
from .routes import build_dashboard

__all__ = ["dashboard_router"]


def dashboard_router(
    manager: TaskManager,
    *,
    prefix: str = "/dashboard",
    dependencies: Sequence[params.Depends] = (),
    expose_error_messages: bool = False,
) -> APIRouter:
    """Build the task dashboard as a FastAPI ``APIRouter``.

    ``app.include_router(dashboard_router(manager, dependencies=[Depends(admin)]))``
    serves the page at ``GET {prefix}`` (and ``{prefix}/``) and, under the
    same prefix, everything it needs: CSS, JS, its JSON, the cancel action
    and the live event stream, the same bytes as
    :func:`bgtasks.starlette.dashboard_router`. It needs no ``task_router``
    and stays out of the OpenAPI schema.

    Args:
        manager: the application's task manager.
        prefix: where the dashboard lives.
        dependencies: run before every one of its routes, the page, its data
            and the cancel action alike, e.g. ``[Depends(require_admin)]``.
        expose_error_messages: show failed tasks' exception messages (default:
            the exception type only). Tracebacks never are.

    Raises:
        TypeError: ``manager`` is not a TaskManager, or the flag not a bool.
    """
    dashboard = build_dashboard(
        manager, "dashboard_router", expose_error_messages=expose_error_messages
    )
    router = APIRouter(
        prefix=prefix, dependencies=list(dependencies), include_in_schema=False
    )

    async def page(request: Request) -> Response:
        return await dashboard.page(request)

    async def asset(request: Request, name: str) -> Response:
        return await dashboard.asset(request, name)

    async def tasks(request: Request) -> Response:
        return await dashboard.tasks(request)

    async def task(request: Request, task_id: str) -> Response:
        return await dashboard.task(request, task_id)

    async def cancel(request: Request, task_id: str) -> Response:
        return await dashboard.cancel(request, task_id)

    async def stats(request: Request) -> Response:
        return await dashboard.stats(request)

    async def events(request: Request) -> Response:
        return await dashboard.events(request)

    if prefix:
        router.add_api_route("", page, methods=["GET"], name="bgtasks_dashboard")
    router.add_api_route("/", page, methods=["GET"])
    router.add_api_route("/static/{name}", asset, methods=["GET"])
    router.add_api_route("/api/tasks", tasks, methods=["GET"])
    router.add_api_route("/api/tasks/{task_id}", task, methods=["GET"])
    router.add_api_route("/api/tasks/{task_id}/cancel", cancel, methods=["POST"])
    router.add_api_route("/api/stats", stats, methods=["GET"])
    router.add_api_route("/api/events", events, methods=["GET"])
    return router
