"""What the dashboard's routes answer, whichever framework routes to them.

Starlette's ``Router`` and FastAPI's ``APIRouter`` both call
:class:`Dashboard`, so the two serve the same bytes. Every answer carries a
strict Content-Security-Policy (the page runs only its own script and style,
and cannot be framed); data is never cached; the cancel action refuses
requests a cross-site page could make. Task data is sent as JSON only, and the
page's script inserts it with ``textContent``: never as HTML.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
from importlib.resources import files
from typing import Any
from urllib.parse import quote, urlsplit

from starlette.requests import Request
from starlette.responses import Response

from ..._manager.records import TaskInfo, TaskState
from ...exceptions import BackendUnavailableError
from .feed import ChangeFeed, EventStream
from .source import CancelOutcome, Stats, TaskSource

__all__ = ["ACTION_HEADER", "CSP", "Dashboard"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'self'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_SECURITY = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_NO_STORE = {**_SECURITY, "Cache-Control": "no-store"}
# Proxies such as nginx would otherwise hold the events back in a buffer.
_STREAM = {**_NO_STORE, "X-Accel-Buffering": "no"}
# A cross-site <form> cannot send a custom header, and a cross-site fetch()
# that sets one needs a CORS preflight the dashboard never grants.
ACTION_HEADER = "X-Bgtasks-Action"
_ASSETS = {
    "dashboard.css": "text/css; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_PAGE_SIZES = range(1, 101)
_DEFAULT_PAGE = 50
_TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_CURSOR = re.compile(r"[0-9]{1,20}~[A-Za-z0-9_-]{1,128}")
_MAX_NAME = 200
# A fixed text: the backend's own error never reaches the page.
_UNAVAILABLE = "task state backend unavailable, try again shortly"


def _json(data: object, status_code: int = 200) -> Response:
    # Escaped to ASCII: a lone surrogate in a task's text still makes valid JSON.
    body = json.dumps(data, allow_nan=False, separators=(",", ":")).encode()
    return Response(body, status_code, _NO_STORE, "application/json")


def _error(status_code: int, detail: str, **extra: str) -> Response:
    return _json({"detail": detail, **extra}, status_code)


def _load(name: str) -> bytes:
    return (files("bgtasks._web.dashboard") / "static" / name).read_bytes()


class Dashboard:
    """The dashboard's page, assets, JSON data, cancel action and event stream."""

    __slots__ = ("_assets", "_page", "expose_error_messages", "feed", "source")

    def __init__(self, source: TaskSource, *, expose_error_messages: bool) -> None:
        self.source = source
        self.expose_error_messages = bool(expose_error_messages)
        self.feed = ChangeFeed(source, self.row, self.stats_body)
        self._assets: dict[str, tuple[bytes, str]] = {}
        digest = hashlib.sha256()
        for name in _ASSETS:
            body = _load(name)
            digest.update(body)
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            self._assets[name] = (body, etag)
        version = digest.hexdigest()[:12]
        self._page = _load("page.html").decode().replace("{{version}}", version)

    # -- rendering --------------------------------------------------------

    def row(self, info: TaskInfo) -> dict[str, Any]:
        """Render a task as the table shows it: every field but the result."""
        data = info.to_dict(include_error_message=self.expose_error_messages)
        data.pop("result", None)
        return data

    async def stats_body(self) -> dict[str, Any]:
        """Render counts per state (every state there is), rate and durations.

        ``scope`` says whose tasks they count: ``"all"`` (every worker, from
        the shared backend) or ``"worker"`` (this process's own records);
        ``degraded`` is true when the backend could not count.
        """
        stats: Stats = await self.source.astats()
        return {
            "states": [
                {"value": state.value, "finished": state.is_finished}
                for state in TaskState
            ],
            "counts": {state.value: count for state, count in stats.counts.items()},
            "total": sum(stats.counts.values()),
            "success_rate": stats.success_rate,
            "duration_p50": stats.duration_p50,
            "duration_p95": stats.duration_p95,
            "live": self.source.running,
            "scope": stats.scope,
            "degraded": stats.degraded,
        }

    # -- the page and its files ------------------------------------------

    async def page(self, request: Request) -> Response:
        """Serve the HTML page; its links are relative to where it is mounted."""
        path = request.url.path
        # Served at "/dashboard" and "/dashboard/": both resolve to ".../dashboard/".
        base = "./" if path.endswith("/") else quote(path.rsplit("/", 1)[-1]) + "/"
        body = self._page.replace("{{base}}", html.escape(base, quote=True))
        return Response(body, 200, _NO_STORE, "text/html; charset=utf-8")

    async def asset(self, request: Request, name: str) -> Response:
        """Serve the page's CSS, JS or icon, revalidated by ETag."""
        found = self._assets.get(name)
        if found is None:
            return _error(404, "not found")
        body, etag = found
        headers = {**_SECURITY, "Cache-Control": "no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(None, 304, headers)
        return Response(body, 200, headers, _ASSETS[name])

    # -- data ---------------------------------------------------------------

    async def tasks(self, request: Request) -> Response:
        """Answer a page of tasks: ``?state=&name=&id=&limit=&cursor=``."""
        query = request.query_params
        try:
            state = _state(query.get("state"))
            limit = _limit(query.get("limit"))
            name = _text(query.get("name"), "name", _MAX_NAME)
            id_prefix = _match(query.get("id"), _TASK_ID, "id", "letters, digits, _ -")
            cursor = _match(query.get("cursor"), _CURSOR, "cursor", "a next_cursor")
        except ValueError as exc:
            return _error(422, str(exc))
        try:
            page = await self.source.page(
                state=state, name=name, id_prefix=id_prefix, limit=limit, cursor=cursor
            )
        except BackendUnavailableError:
            return _error(503, _UNAVAILABLE)
        rows = [self.row(info) for info in page.tasks]
        return _json({"tasks": rows, "next_cursor": page.next_cursor})

    async def task(self, request: Request, task_id: str) -> Response:
        """Answer one task with every field, its JSON result included."""
        try:
            info = (
                await self.source.get(task_id) if _TASK_ID.fullmatch(task_id) else None
            )
        except BackendUnavailableError:
            return _error(503, _UNAVAILABLE)
        if info is None:
            return _error(404, "task not found")
        return _json(info.to_dict(include_error_message=self.expose_error_messages))

    async def stats(self, request: Request) -> Response:
        """Answer the statistics shown above the table."""
        return _json(await self.stats_body())

    async def cancel(self, request: Request, task_id: str) -> Response:
        """POST only, with the action header, from the same origin: CSRF-proof."""
        refused = _refusal(request)
        if refused is not None:
            return _error(403, refused)
        if not _TASK_ID.fullmatch(task_id):
            return _error(404, "task not found")
        try:
            outcome, info = await self.source.cancel(task_id)
        except BackendUnavailableError:
            return _error(503, _UNAVAILABLE)
        if outcome is CancelOutcome.NOT_FOUND or info is None:
            return _error(404, "task not found")
        if outcome is CancelOutcome.FINISHED:
            return _error(409, "task already finished", state=info.state.value)
        return _json(self.row(info), 202)

    async def events(self, request: Request) -> Response:
        """Open the live stream; 503 while the manager is not running."""
        if not self.source.running:
            return _error(503, "the task manager is not running")
        return EventStream(self.feed, _STREAM)


def _refusal(request: Request) -> str | None:
    """Why a cancel request is refused as possibly cross-site; None if not."""
    if request.headers.get(ACTION_HEADER) != "cancel":
        return f"send the header {ACTION_HEADER}: cancel"
    site = request.headers.get("sec-fetch-site")
    if site is not None:  # set by the browser itself: the most reliable signal
        return None if site == "same-origin" else "cross-site request refused"
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
        return "cross-site request refused"
    return None


def _state(raw: str | None) -> TaskState | None:
    if not raw:
        return None
    try:
        return TaskState(raw)
    except ValueError:
        states = ", ".join(state.value for state in TaskState)
        raise ValueError(f"state must be one of: {states}") from None


def _limit(raw: str | None) -> int:
    if raw is None:
        return _DEFAULT_PAGE
    if not (raw.isascii() and raw.isdigit()) or int(raw) not in _PAGE_SIZES:
        raise ValueError("limit must be an integer from 1 to 100")
    return int(raw)


def _text(raw: str | None, what: str, longest: int) -> str | None:
    if not raw:
        return None
    if len(raw) > longest:
        raise ValueError(f"{what} must be at most {longest} characters")
    return raw


def _match(
    raw: str | None, pattern: re.Pattern[str], what: str, hint: str
) -> str | None:
    if not raw:
        return None
    if pattern.fullmatch(raw) is None:
        raise ValueError(f"{what} is malformed: expected {hint}")
    return raw
