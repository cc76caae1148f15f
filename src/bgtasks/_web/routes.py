"""The status/cancel API as a Starlette router, mountable at any prefix."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, Router
from starlette.types import Receive, Scope, Send

from .._manager import TaskManager
from .endpoints import TaskEndpoints, check_manager

__all__ = ["check_manager", "task_router"]


class _Refuse:
    """An ASGI app answering 405; Starlette routes every method to an app."""

    __slots__ = ("allow", "endpoints")

    def __init__(self, endpoints: TaskEndpoints, allow: str) -> None:
        self.endpoints = endpoints
        self.allow = allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.endpoints.method_not_allowed(self.allow)(scope, receive, send)


def task_router(
    manager: TaskManager,
    *,
    max_page_size: int = 100,
    expose_error_messages: bool = False,
) -> Router:
    """Build the task status and cancel API as a Starlette ``Router``.

    Mount it at any prefix: ``Mount("/tasks", app=task_router(manager))``.

    - ``GET /``: 200 ``{"tasks": [...], "has_more": bool, "next": cursor}``,
      newest first; ``?state=`` filters, ``?limit=`` from 1 to
      ``max_page_size`` (the default), 422 for a bad value; ``?cursor=`` the
      ``next`` of the previous page (null on the last), 400 for a bad one.
    - ``GET /{task_id}``: 200 with the task's JSON; 404 for an unknown or
      malformed id.
    - ``DELETE /{task_id}``: 202 cancel requested (body: the task); 404
      unknown; 409 already finished.

    Every error body is ``{"detail": ...}`` with bgtasks' own fixed text,
    including 404 for other paths and 405 for other methods.

    Args:
        manager: the application's task manager.
        max_page_size: the most tasks one ``GET /`` returns.
        expose_error_messages: put failed tasks' exception messages in the
            bodies. Off by default: messages can carry personal data or
            secrets, so only the exception type is sent. Tracebacks never are.

    Raises:
        TypeError: ``manager`` is not a TaskManager, or ``max_page_size`` not an int.
        ValueError: ``max_page_size`` is below 1.
    """
    endpoints = TaskEndpoints(
        manager,
        factory="task_router",
        max_page_size=max_page_size,
        expose_error_messages=expose_error_messages,
    )

    async def list_tasks(request: Request) -> Response:
        return await endpoints.list_tasks(request.query_params)

    async def get_task(request: Request) -> Response:
        return await endpoints.get_task(request.path_params["task_id"])

    async def cancel_task(request: Request) -> Response:
        return await endpoints.cancel_task(request.path_params["task_id"])

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        # Deeper paths (an id with a slash) get the same JSON 404 as unknown ids.
        await endpoints.not_found()(scope, receive, send)

    return Router(
        routes=[
            Route("/", list_tasks, methods=["GET"], name="bgtasks_list_tasks"),
            Route("/{task_id}", get_task, methods=["GET"], name="bgtasks_get_task"),
            Route(
                "/{task_id}",
                cancel_task,
                methods=["DELETE"],
                name="bgtasks_cancel_task",
            ),
            # Any other method: Starlette's own 405 would be plain text.
            Route("/", _Refuse(endpoints, "GET, HEAD"), include_in_schema=False),
            Route(
                "/{task_id}",
                _Refuse(endpoints, "DELETE, GET, HEAD"),
                include_in_schema=False,
            ),
        ],
        default=not_found,
    )
