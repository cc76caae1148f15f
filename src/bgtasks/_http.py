"""The status/cancel HTTP API, independent of how a framework routes requests.

Starlette's router and FastAPI's ``APIRouter`` both call into
:class:`TaskEndpoints`, so the two give the same status codes and the same
JSON bodies byte for byte. Bodies never carry a traceback, and an error's
message only when the application opts in.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

from ._manager.records import TaskState

if TYPE_CHECKING:
    from ._manager import TaskManager
    from ._manager.records import TaskInfo

__all__ = [
    "TASK_ID_PATTERN",
    "TaskEndpoints",
    "check_page_size",
    "is_valid_task_id",
    "parse_limit",
    "parse_state",
]

# The ids the manager hands out (token_urlsafe) and accepts with ``_task_id=``.
TASK_ID_PATTERN = r"^[A-Za-z0-9_-]{1,128}$"
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_STATES = ", ".join(state.value for state in TaskState)
# Status polls must always reach the server, never a cache.
_HEADERS = {"Cache-Control": "no-store"}


def is_valid_task_id(task_id: str) -> bool:
    """Tell whether ``task_id`` has the shape of a task id (cheap, linear time)."""
    return _TASK_ID.fullmatch(task_id) is not None


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


def parse_state(raw: str | None) -> TaskState | None:
    """Read the ``state`` query parameter; ``None`` when absent.

    Raises:
        ValueError: not one of the state values; the message lists them.
    """
    if raw is None:
        return None
    try:
        return TaskState(raw)
    except ValueError:
        raise ValueError(f"state must be one of: {_STATES}") from None


def parse_limit(raw: str | None, max_page_size: int) -> int:
    """Read the ``limit`` query parameter; ``max_page_size`` when absent.

    Raises:
        ValueError: not a decimal integer between 1 and ``max_page_size``.
    """
    if raw is None:
        return max_page_size
    # isdigit() alone accepts other scripts' digits and "²"; int() would then fail.
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= max_page_size:
        raise ValueError(f"limit must be an integer from 1 to {max_page_size}")
    return int(raw)


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
    """What the status/cancel routes do, given already parsed parameters."""

    __slots__ = ("expose_error_messages", "manager", "max_page_size")

    def __init__(
        self, manager: TaskManager, *, max_page_size: int, expose_error_messages: bool
    ) -> None:
        self.manager = manager
        self.max_page_size = check_page_size(max_page_size)
        self.expose_error_messages = bool(expose_error_messages)

    def task_body(self, info: TaskInfo) -> dict[str, Any]:
        """Render one task as JSON; ``to_dict`` leaves out a non-JSON result."""
        return info.to_dict(include_error_message=self.expose_error_messages)

    def bad_request(self, detail: str) -> JSONResponse:
        """Answer 422 for a query parameter that failed validation."""
        return _error(422, detail)

    def not_found(self) -> JSONResponse:
        """Answer 404 for an id that names no task."""
        return _error(404, "task not found")

    def list_tasks(self, state: TaskState | None, limit: int) -> JSONResponse:
        """200 with up to ``limit`` tasks, newest first, and whether more exist."""
        infos = self.manager.list(state=state, limit=limit + 1)
        body = {
            "tasks": [self.task_body(info) for info in infos[:limit]],
            "has_more": len(infos) > limit,
        }
        return _JSON(body, headers=_HEADERS)

    def get_task(self, task_id: str) -> JSONResponse:
        """200 with the task's snapshot, 404 for an unknown or malformed id."""
        info = self.manager.get(task_id) if is_valid_task_id(task_id) else None
        if info is None:
            return self.not_found()
        return _JSON(self.task_body(info), headers=_HEADERS)

    async def cancel_task(self, task_id: str) -> JSONResponse:
        """202 once cancel is requested, 404 if unknown, 409 if already finished."""
        info = self.manager.get(task_id) if is_valid_task_id(task_id) else None
        if info is None:
            return self.not_found()
        if not info.state.is_finished and await self.manager.cancel(task_id):
            info = self.manager.get(task_id) or info
            return _JSON(self.task_body(info), 202, headers=_HEADERS)
        # Finished before the request, or in the race between get and cancel.
        latest = self.manager.get(task_id)
        if latest is None:
            return self.not_found()
        return _error(409, "task already finished", state=latest.state.value)
