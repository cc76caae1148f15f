"""The status/cancel HTTP API, independent of how a framework routes requests.

Starlette's router and FastAPI's ``APIRouter`` both hand the request's query
and path parameters to :class:`TaskEndpoints`, which parses them and answers,
so the two give the same status codes and the same JSON bodies byte for byte.
Bodies never carry a traceback, and an error's message only when the
application opts in.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from starlette.responses import JSONResponse

from .._manager import TaskManager
from .._manager.records import TaskState
from .._manager.registry import TASK_ID_PATTERN
from ..exceptions import BackendUnavailableError

if TYPE_CHECKING:
    from .._manager.records import TaskInfo

__all__ = [
    "TaskEndpoints",
    "check_manager",
    "check_page_size",
    "is_valid_task_id",
]

_STATE_OF = {state.value: state for state in TaskState}
# Every detail a body can carry is one of these fixed texts: no message from
# Python, a parser or the application ever reaches a client.
BAD_STATE = "state must be one of: " + ", ".join(_STATE_OF)
BAD_LIMIT = "limit must be an integer from 1 to {max_page_size}"
NOT_FOUND = "task not found"
ALREADY_FINISHED = "task already finished"
METHOD_NOT_ALLOWED = "method not allowed"
BAD_CURSOR = "cursor is not valid here: use the next value of an earlier page, or none"
UNAVAILABLE = "task state backend unavailable, try again shortly"
_LIMIT_DIGITS = 18
# Status polls must always reach the server, never a cache.
_HEADERS = {"Cache-Control": "no-store"}


def is_valid_task_id(task_id: str) -> bool:
    """Tell whether ``task_id`` has the shape of a task id (cheap, linear time)."""
    return TASK_ID_PATTERN.fullmatch(task_id) is not None


def check_manager(manager: object, factory: str) -> TaskManager:
    """Refuse anything but a TaskManager when a route or dependency is built.

    Raises:
        TypeError: ``manager`` is not a :class:`~bgtasks.TaskManager`.
    """
    if not isinstance(manager, TaskManager):
        raise TypeError(
            f"{factory}() needs the app's bgtasks.TaskManager as manager, got "
            f"{type(manager).__name__}: create one with manager = TaskManager() "
            "and pass the same object to the lifespan and the routes."
        )
    return manager


def check_page_size(max_page_size: object) -> int:
    """Validate the ``max_page_size`` option of a router factory.

    Raises:
        TypeError: it is not an int.
        ValueError: it is below 1.
    """
    if not isinstance(max_page_size, int) or isinstance(max_page_size, bool):
        raise TypeError(
            f"max_page_size must be an int, got {type(max_page_size).__name__}: "
            "pass the largest number of tasks one GET may return, e.g. 100."
        )
    if max_page_size < 1:
        raise ValueError(
            f"max_page_size must be at least 1, got {max_page_size}: "
            "pass the largest number of tasks one GET may return, e.g. 100."
        )
    return max_page_size


def _parse_state(raw: str | None) -> TaskState | Literal[False] | None:
    """Read the ``state`` query parameter: None when absent, False when invalid."""
    if raw is None:
        return None
    return _STATE_OF.get(raw, False)


def _parse_limit(raw: str | None, max_page_size: int) -> int | None:
    """Read the ``limit`` query parameter: None when invalid."""
    if raw is None:
        return max_page_size
    # isdigit() alone accepts other scripts' digits and "²"; the length cap
    # keeps int() off inputs it would refuse with its own message, or be slow on.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > _LIMIT_DIGITS:
        return None
    limit = int(raw)
    return limit if 1 <= limit <= max_page_size else None


class _JSON(JSONResponse):
    """JSON with every non-ASCII character escaped.

    A task's result, name or progress message may hold a lone surrogate (a
    file name from a non-UTF-8 disk): Starlette's UTF-8 rendering would then
    fail and answer 500; escaped, every Python str is valid JSON text.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, allow_nan=False, separators=(",", ":")).encode()


def _error(status_code: int, detail: str, **extra: str) -> JSONResponse:
    return _JSON({"detail": detail, **extra}, status_code, headers=_HEADERS)


class TaskEndpoints:
    """What the status/cancel routes do, from the request's raw parameters."""

    __slots__ = ("bad_limit", "expose_error_messages", "manager", "max_page_size")

    def __init__(
        self,
        manager: object,
        *,
        factory: str,
        max_page_size: object,
        expose_error_messages: bool,
    ) -> None:
        """Check a router factory's arguments; ``factory`` names it in errors.

        Raises:
            TypeError: ``manager`` is not a TaskManager, or ``max_page_size``
                not an int.
            ValueError: ``max_page_size`` is below 1.
        """
        self.manager = check_manager(manager, factory)
        self.max_page_size = check_page_size(max_page_size)
        self.expose_error_messages = bool(expose_error_messages)
        self.bad_limit = BAD_LIMIT.format(max_page_size=self.max_page_size)

    def task_body(self, info: TaskInfo) -> dict[str, Any]:
        """Render one task as JSON; ``to_dict`` leaves out a non-JSON result."""
        return info.to_dict(include_error_message=self.expose_error_messages)

    def not_found(self) -> JSONResponse:
        """Answer 404 for an id that names no task."""
        return _error(404, NOT_FOUND)

    def method_not_allowed(self, allow: str) -> JSONResponse:
        """Answer 405 with the methods the path serves."""
        return _JSON(
            {"detail": METHOD_NOT_ALLOWED},
            405,
            headers={**_HEADERS, "Allow": allow},
        )

    def unavailable(self) -> JSONResponse:
        """Answer 503: the shared backend did not answer (never its error's text)."""
        return _JSON(
            {"detail": UNAVAILABLE}, 503, headers={**_HEADERS, "Retry-After": "1"}
        )

    async def list_tasks(self, query: Mapping[str, str]) -> JSONResponse:
        """200 with a page of tasks, newest first; 422 or 400 for a bad parameter.

        ``next`` is the cursor of the next page (None on the last one): the
        client sends it back as ``?cursor=``, with the same ``state``.
        """
        state = _parse_state(query.get("state"))
        if state is False:
            return _error(422, BAD_STATE)
        limit = _parse_limit(query.get("limit"), self.max_page_size)
        if limit is None:
            return _error(422, self.bad_limit)
        try:
            page = await self.manager.alist(
                state=state, limit=limit, after=query.get("cursor")
            )
        except ValueError:  # state and limit are valid: it is the cursor
            return _error(400, BAD_CURSOR)
        except BackendUnavailableError:
            return self.unavailable()
        body = {
            "tasks": [self.task_body(info) for info in page],
            "has_more": page.next_cursor is not None,
            "next": page.next_cursor,
        }
        return _JSON(body, headers=_HEADERS)

    async def get_task(self, task_id: str) -> JSONResponse:
        """200 with the task's snapshot, 404 for an unknown or malformed id."""
        try:
            info = await self._read(task_id)
        except BackendUnavailableError:
            return self.unavailable()
        if info is None:
            return self.not_found()
        return _JSON(self.task_body(info), headers=_HEADERS)

    async def _read(self, task_id: str) -> TaskInfo | None:
        return await self.manager.aget(task_id) if is_valid_task_id(task_id) else None

    async def cancel_task(self, task_id: str) -> JSONResponse:
        """202 once cancel is requested, 404 if unknown, 409 if already finished."""
        try:
            info = await self._read(task_id)
            if info is None:
                return self.not_found()
            if not info.state.is_finished and await self.manager.cancel(task_id):
                info = await self.manager.aget(task_id) or info
                return _JSON(self.task_body(info), 202, headers=_HEADERS)
            # Finished before the request, or in the race between get and cancel.
            latest = await self.manager.aget(task_id)
        except BackendUnavailableError:
            return self.unavailable()
        if latest is None:
            return self.not_found()
        return _error(409, ALREADY_FINISHED, state=latest.state.value)
