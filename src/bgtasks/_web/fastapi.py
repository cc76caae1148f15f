"""FastAPI integration: the status/cancel ``APIRouter`` and the tracked tasks.

No ``from __future__ import annotations`` here: FastAPI reads the endpoints'
annotations at run time, and some name closure variables (``max_page_size``).
"""

from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any, Optional

from fastapi import APIRouter, BackgroundTasks, Depends, Request, params
from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from starlette.responses import Response

from .._manager import TaskManager
from .._manager.background import unsent
from .._manager.records import TaskState
from .._manager.registry import TASK_ID_PATTERN
from .endpoints import TaskEndpoints, check_manager
from .lifespan import manager_from_app
from .tracked import TrackedBackgroundTasks

__all__ = [
    "BgtasksCancelConflict",
    "BgtasksErrorDetail",
    "BgtasksTaskError",
    "BgtasksTaskInfo",
    "BgtasksTaskList",
    "TrackedTasks",
    "task_router",
    "task_tag",
    "tracked_tasks",
]

# Inline in each model rather than a "TaskState" component of the app's schema.
_State = Annotated[
    TaskState,
    WithJsonSchema({"type": "string", "enum": [state.value for state in TaskState]}),
]

# Each model (and so its OpenAPI component) is named Bgtasks...: components are
# named after the class, and an app's own "TaskInfo" must not clash with ours.


class BgtasksTaskError(BaseModel):
    """Why a task failed: the exception type, and its message only if exposed."""

    model_config = ConfigDict(title="BgtasksTaskError")
    type: str = Field(description="The exception type's qualified name.")
    message: Optional[str] = Field(  # noqa: UP045 - pydantic evaluates it on 3.10 too
        default=None, description="str(exception), only with expose_error_messages."
    )


class BgtasksTaskInfo(BaseModel):
    """A task's status snapshot, as ``TaskInfo.to_dict()`` gives it."""

    model_config = ConfigDict(title="BgtasksTaskInfo")

    id: str
    name: str = Field(description="The task function's qualified name.")
    state: _State
    created_at: datetime
    started_at: Optional[datetime]  # noqa: UP045 - see BgtasksTaskError
    finished_at: Optional[datetime]  # noqa: UP045 - see BgtasksTaskError
    result: Any = Field(
        default=None,
        description="The return value on success; absent if not JSON-serializable.",
    )
    error: Optional[BgtasksTaskError]  # noqa: UP045 - see BgtasksTaskError
    progress: Optional[float] = Field(ge=0.0, le=1.0)  # noqa: UP045 - see BgtasksTaskError
    message: Optional[str] = Field(description="The latest progress message.")  # noqa: UP045 - see BgtasksTaskError
    attempt: int = Field(ge=1, description="The attempt number under bgtasks.retry.")
    cancel_requested: bool
    cancel_reason: Optional[str] = Field(  # noqa: UP045 - see BgtasksTaskError
        default=None,
        description='Why bgtasks cancelled the task itself: "response not sent".',
    )
    next_attempt_at: Optional[datetime] = Field(  # noqa: UP045 - see BgtasksTaskError
        default=None,
        description="While bgtasks.retry waits between attempts: when the next starts.",
    )


class BgtasksTaskList(BaseModel):
    """One page of tasks, newest first."""

    model_config = ConfigDict(title="BgtasksTaskList")
    tasks: list[BgtasksTaskInfo]
    has_more: bool = Field(description="More tasks match than this page holds.")
    next: Optional[str] = Field(  # noqa: UP045 - see BgtasksTaskError
        description=(
            "The cursor of the next page: pass it back as `cursor`, with the "
            "same `state`. null on the last page."
        )
    )


class BgtasksErrorDetail(BaseModel):
    """An error answer: what went wrong in bgtasks' fixed words, never a traceback."""

    model_config = ConfigDict(title="BgtasksErrorDetail")
    detail: str


class BgtasksCancelConflict(BgtasksErrorDetail):
    """409: the task had already finished, in this state."""

    model_config = ConfigDict(title="BgtasksCancelConflict")

    state: _State


_TAG_DESCRIPTION = (
    "Status, progress and cancellation of the app's background tasks "
    "(bgtasks). Every answer has `Cache-Control: no-store`."
)

# Every answer of the routes carries it, errors included.
_NO_STORE = {
    "Cache-Control": {
        "description": "Always `no-store`: a status is never served from a cache.",
        "schema": {"type": "string", "enum": ["no-store"]},
    }
}


def _responses(
    *extra: tuple[int, type[BaseModel], str], ok: int = 200
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI responses: the success code and ``extra`` errors, all no-store."""
    answers: dict[int | str, dict[str, Any]] = {ok: {"headers": _NO_STORE}}
    for code, model, description in extra:
        answers[code] = {
            "model": model,
            "description": description,
            "headers": _NO_STORE,
        }
    return answers


_NOT_FOUND = (404, BgtasksErrorDetail, "Unknown or malformed task id.")
_UNAVAILABLE = (
    503,
    BgtasksErrorDetail,
    "The shared task state backend (Redis) did not answer; retry shortly.",
)


# The routes read their parameters themselves (see task_router), so OpenAPI
# learns about them from here.
_TASK_ID_PARAMETER: dict[str, Any] = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "description": "The id that spawn() or add_task() gave the task.",
    # JSON Schema patterns match anywhere: anchor it to the whole id.
    "schema": {"type": "string", "pattern": f"^{TASK_ID_PATTERN.pattern}$"},
}


def _list_parameters(max_page_size: int) -> list[dict[str, Any]]:
    return [
        {
            "name": "state",
            "in": "query",
            "required": False,
            "description": "Only tasks in this state.",
            "schema": {"type": "string", "enum": [s.value for s in TaskState]},
        },
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "description": "Page size.",
            "schema": {
                "type": "integer",
                "minimum": 1,
                "maximum": max_page_size,
                "default": max_page_size,
            },
        },
        {
            "name": "cursor",
            "in": "query",
            "required": False,
            "description": (
                "Where the page starts: the `next` of the previous page. "
                "Opaque; 400 if it is not one this server gave."
            ),
            "schema": {"type": "string"},
        },
    ]


def task_router(
    manager: TaskManager,
    *,
    prefix: str = "/tasks",
    dependencies: Sequence[params.Depends] | None = None,
    tags: Sequence[str] = ("tasks",),
    max_page_size: int = 100,
    expose_error_messages: bool = False,
    include_in_schema: bool = True,
) -> APIRouter:
    """Build the task status and cancel API as a FastAPI ``APIRouter``.

    ``app.include_router(task_router(manager))`` serves ``GET /tasks``,
    ``GET /tasks/{task_id}`` and ``DELETE /tasks/{task_id}`` with the same
    status codes and bodies as :func:`bgtasks.starlette.task_router`, and
    with response models, so they appear in the app's OpenAPI docs.

    Args:
        manager: the application's task manager.
        prefix: where the routes live; ``include_router(prefix=...)`` can
            nest them further.
        dependencies: run before every route, e.g. ``[Depends(require_admin)]``:
            task ids are unguessable, but who may list and cancel tasks is the
            application's decision.
        tags: OpenAPI tags of the routes; describe them in the app with
            ``FastAPI(openapi_tags=[task_tag()])``.
        max_page_size: the most tasks one ``GET`` of the list returns.
        expose_error_messages: put failed tasks' exception messages in the
            bodies (default: the exception type only). Tracebacks never are.
        include_in_schema: show the routes in the OpenAPI schema.

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
    router = APIRouter(
        prefix=prefix,
        tags=list(tags),
        dependencies=list(dependencies or ()),
        include_in_schema=include_in_schema,
    )

    # The endpoints take the raw request and validate it themselves, so a bad
    # value gets bgtasks' fixed wording, not FastAPI's echo of the input.
    async def list_tasks(request: Request) -> Response:
        return await endpoints.list_tasks(request.query_params)

    async def get_task(request: Request) -> Response:
        return await endpoints.get_task(request.path_params["task_id"])

    async def cancel_task(request: Request) -> Response:
        return await endpoints.cancel_task(request.path_params["task_id"])

    router.add_api_route(
        "" if prefix else "/",
        list_tasks,
        methods=["GET"],
        response_model=BgtasksTaskList,
        responses=_responses(
            (400, BgtasksErrorDetail, "Not a cursor this server gave."),
            (422, BgtasksErrorDetail, "A state or limit out of range."),
            _UNAVAILABLE,
        ),
        operation_id="bgtasks_list_tasks",
        summary="List background tasks",
        description=(
            "Newest first, at most `limit` of them. For the next page, pass "
            "the answer's `next` as `cursor`, with the same `state`."
        ),
        name="bgtasks_list_tasks",
        openapi_extra={"parameters": _list_parameters(endpoints.max_page_size)},
    )
    router.add_api_route(
        "/{task_id}",
        get_task,
        methods=["GET"],
        response_model=BgtasksTaskInfo,
        responses=_responses(_NOT_FOUND, _UNAVAILABLE),
        operation_id="bgtasks_get_task",
        summary="Get a background task's status",
        openapi_extra={"parameters": [_TASK_ID_PARAMETER]},
        name="bgtasks_get_task",
    )
    router.add_api_route(
        "/{task_id}",
        cancel_task,
        methods=["DELETE"],
        status_code=202,
        response_model=BgtasksTaskInfo,
        responses=_responses(
            _NOT_FOUND,
            (409, BgtasksCancelConflict, "Already finished."),
            _UNAVAILABLE,
            ok=202,
        ),
        operation_id="bgtasks_cancel_task",
        summary="Request a background task's cancellation",
        openapi_extra={"parameters": [_TASK_ID_PARAMETER]},
        description=(
            "Async tasks are cancelled at once; sync tasks stop at their next "
            "`bgtasks.checkpoint()`. Poll the task until its state is final."
        ),
        name="bgtasks_cancel_task",
    )
    return router


def task_tag(name: str = "tasks") -> dict[str, str]:
    """Describe the routes' OpenAPI tag, for ``FastAPI(openapi_tags=[...])``.

    A router cannot add to the app's list of tags, so the description goes in
    where the app lists its own: ``FastAPI(openapi_tags=[task_tag()])``.

    Args:
        name: the tag given to :func:`task_router` as ``tags``.
    """
    return {"name": name, "description": _TAG_DESCRIPTION}


def tracked_tasks(
    manager: TaskManager | None = None,
) -> Callable[[Request, BackgroundTasks], AsyncIterator[TrackedBackgroundTasks]]:
    """Build a dependency that gives the request's tracked ``BackgroundTasks``.

    Tasks added through it, through other dependencies and through a plain
    ``BackgroundTasks`` parameter all go to the request's one
    ``BackgroundTasks`` and run after the response, in the order added. If
    the request fails instead (the endpoint raises, even an
    ``HTTPException``; the client is gone), they never run: the tracked ones
    end CANCELLED with ``cancel_reason="response not sent"``.

    Args:
        manager: the task manager; by default the one that
            :func:`bgtasks.starlette.lifespan` published on ``app.state``.

    Raises:
        TypeError: ``manager`` is given and is not a TaskManager.

    Example:
        ```python
        from typing import Annotated
        from fastapi import Depends
        from bgtasks import TaskManager
        from bgtasks.fastapi import TrackedBackgroundTasks, tracked_tasks

        manager = TaskManager()
        Tasks = Annotated[TrackedBackgroundTasks, Depends(tracked_tasks(manager))]
        ```
    """
    if manager is not None:
        check_manager(manager, "tracked_tasks")

    # async, so FastAPI calls it on the loop instead of a worker thread; a
    # yield dependency, so it sees the request fail.
    async def get_tracked_tasks(
        request: Request, background_tasks: BackgroundTasks
    ) -> AsyncIterator[TrackedBackgroundTasks]:
        found = manager_from_app(request.app) if manager is None else manager
        try:
            yield TrackedBackgroundTasks(found, background_tasks)
        except BaseException:
            # No background task runs after a failed request: end the tracked
            # ones now, before the error response goes out.
            for record in unsent(background_tasks):
                record.engine.abandon(record)
            raise

    return get_tracked_tasks


TrackedTasks = Annotated[TrackedBackgroundTasks, Depends(tracked_tasks())]
"""Endpoint parameter type: the request's tracked tasks, manager from the lifespan."""
