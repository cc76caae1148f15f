"""The dashboard over HTTP, in Starlette and FastAPI: page, data, cancel, safety."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.applications import Starlette
from starlette.routing import Mount

import bgtasks.fastapi
import bgtasks.starlette
from bgtasks import TaskManager, current_task

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

Backend = Literal["asyncio", "trio"]
XSS = "<img src=x onerror=alert(1)>"
SECRET = "card declined for dana@example.com"
CANCEL = {"X-Bgtasks-Action": "cancel"}


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


async def succeed() -> dict[str, Any]:
    """Return a JSON result holding markup."""
    return {"note": XSS}


async def fail() -> None:
    """Fail with a message that must stay on the server."""
    raise ValueError(SECRET)


async def hold() -> None:
    """Report an HTML progress message, then run until cancelled."""
    current_task().set_progress(0.25, XSS)
    await anyio.sleep_forever()


@dataclass
class Site:
    """An app with the dashboard, its running TestClient and where the page is."""

    client: TestClient
    manager: TaskManager
    base: str

    def run(self, func: Any) -> str:
        """Spawn ``func`` and wait until it finished; return its id."""
        handle = self.manager.spawn(func)
        self.client.portal.call(handle.wait)  # type: ignore[union-attr]
        return handle.id

    def start(self, func: Any) -> str:
        """Spawn ``func`` and wait until it runs; return its id."""
        handle = self.manager.spawn(func)

        async def running() -> None:
            while (info := handle.info()) is None or info.progress is None:
                await anyio.sleep(0.001)

        self.client.portal.call(running)  # type: ignore[union-attr]
        return handle.id


def starlette_app(manager: TaskManager, expose: bool) -> Starlette:
    """The Starlette way: mount the router."""
    router = bgtasks.starlette.dashboard_router(manager, expose_error_messages=expose)
    return Starlette(
        lifespan=bgtasks.starlette.lifespan(manager),
        routes=[Mount("/dashboard", app=router)],
    )


def fastapi_app(manager: TaskManager, expose: bool) -> FastAPI:
    """The FastAPI way: include the router."""
    app = FastAPI(lifespan=bgtasks.fastapi.lifespan(manager))
    app.include_router(
        bgtasks.fastapi.dashboard_router(manager, expose_error_messages=expose)
    )
    return app


@pytest.fixture(params=["starlette", "fastapi"])
def flavour(request: pytest.FixtureRequest) -> str:
    """Each test runs against both frameworks' routers."""
    return str(request.param)


def open_site(
    flavour: str, backend: Backend, *, expose: bool = False
) -> Iterator[Site]:
    """Run the app of ``flavour`` with its lifespan; yield it."""
    manager = TaskManager(drain_timeout=0.05)
    build = starlette_app if flavour == "starlette" else fastapi_app
    with TestClient(build(manager, expose), backend=backend) as client:
        yield Site(client, manager, "/dashboard/")


@pytest.fixture
def site(flavour: str, backend: Backend) -> Iterator[Site]:
    """The dashboard with error messages hidden (the default)."""
    yield from open_site(flavour, backend)


def test_page_has_strict_security_headers(site: Site) -> None:
    """The page forbids inline code, framing and sniffing, and is never cached."""
    response = site.client.get(site.base)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "script-src 'self';" in csp
    assert "style-src 'self';" in csp
    assert "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-frame-options"] == "DENY"


def test_page_has_no_inline_script_or_style(site: Site) -> None:
    """Every script and stylesheet is a file under the dashboard: CSP can be strict."""
    html = site.client.get(site.base).text
    assert re.findall(r"<script[^>]*>", html) == [
        re.search(r'<script src="static/dashboard\.js\?v=\w+" defer>', html).group(0)  # type: ignore[union-attr]
    ]
    assert "<style" not in html
    assert " style=" not in html
    assert re.search(r"\son[a-z]+=", html) is None  # no inline event handlers


def test_assets_are_served_with_types_and_etags(site: Site) -> None:
    """CSS and JS come from the package, typed, revalidated by ETag; others 404."""
    js = site.client.get(site.base + "static/dashboard.js")
    assert js.status_code == 200
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert js.headers["x-content-type-options"] == "nosniff"
    again = site.client.get(
        site.base + "static/dashboard.js", headers={"If-None-Match": js.headers["etag"]}
    )
    assert again.status_code == 304
    css = site.client.get(site.base + "static/dashboard.css")
    assert css.headers["content-type"] == "text/css; charset=utf-8"
    assert site.client.get(site.base + "static/evil.js").status_code == 404


def test_page_and_assets_stay_small() -> None:
    """Page, CSS, JS and icon together stay under 50 KB, with no external URL."""
    from importlib.resources import files

    static = files("bgtasks._web.dashboard") / "static"
    names = ["page.html", "dashboard.css", "dashboard.js", "favicon.svg"]
    texts = [(static / name).read_text(encoding="utf-8") for name in names]
    assert sum(len(text.encode()) for text in texts) < 50_000
    for text in texts:
        assert re.findall(r"https?://(?!www\.w3\.org/2000/svg)", text) == []


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/"])
def test_page_links_resolve_under_the_prefix(backend: Backend, path: str) -> None:
    """The page's <base> points at the prefix whether or not the URL has a slash."""
    for site in open_site("fastapi", backend):
        html = site.client.get(path).text
        base = re.search(r'<base href="([^"]+)">', html).group(1)  # type: ignore[union-attr]
        assert base == ("./" if path.endswith("/") else "dashboard/")


def test_list_filters_and_pages(site: Site) -> None:
    """``api/tasks`` filters by state, name and id, and pages by cursor."""
    done = [site.run(succeed) for _ in range(3)]
    failed = site.run(fail)
    body = site.client.get(site.base + "api/tasks").json()
    assert [t["id"] for t in body["tasks"]] == [failed, *reversed(done)]
    assert body["next_cursor"] is None
    only = site.client.get(site.base + "api/tasks", params={"state": "failed"}).json()
    assert [t["id"] for t in only["tasks"]] == [failed]
    named = site.client.get(site.base + "api/tasks", params={"name": "SUCC"}).json()
    assert [t["id"] for t in named["tasks"]] == list(reversed(done))
    by_id = site.client.get(site.base + "api/tasks", params={"id": done[0]}).json()
    assert [t["id"] for t in by_id["tasks"]] == [done[0]]
    first = site.client.get(site.base + "api/tasks", params={"limit": 2}).json()
    assert len(first["tasks"]) == 2
    rest = site.client.get(
        site.base + "api/tasks", params={"limit": 2, "cursor": first["next_cursor"]}
    ).json()
    assert [t["id"] for t in first["tasks"] + rest["tasks"]] == [
        failed,
        *reversed(done),
    ]
    assert "result" not in body["tasks"][1]


@pytest.mark.parametrize(
    ("params", "detail"),
    [
        ({"state": "done"}, "state must be one of: pending, running, succeeded"),
        ({"limit": "0"}, "limit must be an integer from 1 to 100"),
        ({"limit": "²"}, "limit must be an integer from 1 to 100"),
        ({"id": "no spaces"}, "id is malformed"),
        ({"cursor": "x"}, "cursor is malformed"),
        ({"name": "n" * 201}, "name must be at most 200 characters"),
    ],
)
def test_bad_query_is_422(site: Site, params: dict[str, str], detail: str) -> None:
    """A bad filter is a 422 that says what is expected."""
    response = site.client.get(site.base + "api/tasks", params=params)
    assert response.status_code == 422
    assert response.json()["detail"].startswith(detail)


def test_detail_has_every_field_and_the_result(site: Site) -> None:
    """``api/tasks/{id}`` is the task's full snapshot; unknown ids are 404."""
    task_id = site.run(succeed)
    response = site.client.get(site.base + f"api/tasks/{task_id}")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["result"] == {"note": XSS}
    info = site.manager.get(task_id)
    assert info is not None
    assert set(body) == set(info.to_dict())
    assert site.client.get(site.base + "api/tasks/nope").status_code == 404
    assert site.client.get(site.base + "api/tasks/a%20b").status_code == 404


def test_stats_count_every_state(site: Site) -> None:
    """``api/stats`` lists every TaskState with its count and the run times."""
    site.run(succeed)
    site.run(fail)
    body = site.client.get(site.base + "api/stats").json()
    assert body["counts"] == {
        "pending": 0,
        "running": 0,
        "succeeded": 1,
        "failed": 1,
        "cancelled": 0,
        "interrupted": 0,
    }
    assert [s["value"] for s in body["states"]] == list(body["counts"])
    assert body["success_rate"] == 0.5
    assert body["duration_p50"] >= 0
    assert body["live"] is True
    # No shared backend: this process's own records, and nothing is degraded.
    assert (body["scope"], body["degraded"]) == ("worker", False)


def test_error_messages_hidden_by_default(site: Site) -> None:
    """Without the opt-in, no answer carries the exception's message."""
    task_id = site.run(fail)
    for path in ["api/tasks", f"api/tasks/{task_id}", "api/stats", ""]:
        text = site.client.get(site.base + path).text
        assert "dana@example.com" not in text
    detail = site.client.get(site.base + f"api/tasks/{task_id}").json()
    assert detail["error"] == {"type": "ValueError", "message": None}


def test_error_messages_shown_when_exposed(flavour: str, backend: Backend) -> None:
    """``expose_error_messages=True`` puts the message in the data."""
    for site in open_site(flavour, backend, expose=True):
        task_id = site.run(fail)
        detail = site.client.get(site.base + f"api/tasks/{task_id}").json()
        assert detail["error"] == {"type": "ValueError", "message": SECRET}


def test_markup_is_served_as_json_data(site: Site) -> None:
    """A task's HTML travels as JSON (nosniff), never in the page's markup."""
    task_id = site.start(hold)
    response = site.client.get(site.base + "api/tasks")
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.json()["tasks"][0]["message"] == XSS
    assert XSS not in site.client.get(site.base).text
    assert task_id not in site.client.get(site.base).text


def test_cancel_needs_post_and_the_action_header(site: Site) -> None:
    """A GET, or a POST without the header (a cross-site form), cancels nothing."""
    task_id = site.start(hold)
    url = site.base + f"api/tasks/{task_id}/cancel"
    assert site.client.get(url).status_code == 405
    plain = site.client.post(url)
    assert plain.status_code == 403
    assert plain.json() == {"detail": "send the header X-Bgtasks-Action: cancel"}
    info = site.manager.get(task_id)
    assert info is not None
    assert info.cancel_requested is False


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "https://evil.example"},
    ],
)
def test_cancel_refuses_other_origins(site: Site, headers: dict[str, str]) -> None:
    """Even with the header, a request the browser marks cross-site is refused."""
    task_id = site.start(hold)
    response = site.client.post(
        site.base + f"api/tasks/{task_id}/cancel", headers={**CANCEL, **headers}
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "cross-site request refused"}


def test_cancel_from_the_page(site: Site) -> None:
    """202 with the task, then 409 once finished; 404 for unknown ids."""
    task_id = site.start(hold)
    url = site.base + f"api/tasks/{task_id}/cancel"
    same = {**CANCEL, "Sec-Fetch-Site": "same-origin", "Origin": "http://testserver"}
    response = site.client.post(url, headers=same)
    assert response.status_code == 202
    assert response.json()["id"] == task_id

    async def finished() -> None:
        await site.manager.wait(task_id)

    site.client.portal.call(finished)  # type: ignore[union-attr]
    again = site.client.post(url, headers=CANCEL)
    assert again.status_code == 409
    assert again.json() == {"detail": "task already finished", "state": "cancelled"}
    for unknown in ["x", "a%20b"]:
        missing = site.client.post(
            site.base + f"api/tasks/{unknown}/cancel", headers=CANCEL
        )
        assert missing.json() == {"detail": "task not found"}


def test_fastapi_dependencies_guard_every_route(backend: Backend) -> None:
    """One ``dependencies=`` protects the page, its files, data, stream and cancel."""

    def admin_only(request: Request) -> None:
        if request.headers.get("x-admin") != "yes":
            raise HTTPException(401, "admins only")

    manager = TaskManager(drain_timeout=0.05)
    app = FastAPI(lifespan=bgtasks.fastapi.lifespan(manager))
    app.include_router(
        bgtasks.fastapi.dashboard_router(
            manager, prefix="/ops/tasks", dependencies=[Depends(admin_only)]
        )
    )
    paths = ["", "/", "/static/dashboard.js", "/api/tasks", "/api/stats"]
    paths += ["/api/tasks/x", "/api/events"]
    with TestClient(app, backend=backend) as client:
        for path in paths:
            assert client.get("/ops/tasks" + path).status_code == 401, path
        post = client.post("/ops/tasks/api/tasks/x/cancel", headers=CANCEL)
        assert post.status_code == 401
        assert client.get("/ops/tasks/", headers={"x-admin": "yes"}).status_code == 200
        assert "/ops/tasks" not in client.get("/openapi.json").text


def test_factories_check_their_arguments() -> None:
    """A wrong manager or flag fails when the router is built, naming the fix."""
    with pytest.raises(TypeError, match=r"needs the app's bgtasks\.TaskManager"):
        bgtasks.starlette.dashboard_router(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"needs the app's bgtasks\.TaskManager"):
        bgtasks.fastapi.dashboard_router(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be True or False"):
        bgtasks.starlette.dashboard_router(
            TaskManager(),
            expose_error_messages="yes",  # type: ignore[arg-type]
        )
