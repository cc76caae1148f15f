"""The dashboard in a real browser: Debian's headless Chromium, driven by Playwright.

A FastAPI app with the dashboard runs under uvicorn on a free loopback port;
the tests spawn tasks into its manager from this thread and watch the page.
They skip when Playwright or /usr/bin/chromium is missing, except under
CI=true, where that is a failure. ``BGTASKS_SCREENSHOTS=docs/img`` also writes
the docs' screenshots (light and dark).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from bgtasks import TaskManager, current_task
from bgtasks._web.dashboard import feed as feed_module

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytest.importorskip("uvicorn", reason="the browser tests serve the app with uvicorn")

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
XSS = "<img src=x onerror=alert(1)>"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "Playwright is not installed: pip install playwright (the test group)"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM}: apt-get install chromium (as .ci/run does)"
    return None


class Control:
    """What the test thread tells the tasks: how far to go, when to stop."""

    def __init__(self) -> None:
        self.step = 0
        self.stop = threading.Event()
        self.finish = threading.Event()


async def stepper(control: Control, message: str | None = None) -> str:
    """Report progress whenever the test moves ``control.step``."""
    task = current_task()
    seen = -1
    while not control.stop.is_set():
        if control.step != seen:
            seen = control.step
            task.set_progress(min(seen / 10, 1.0), message or f"step {seen} of 10")
        await anyio.sleep(0.02)
    return "done"


async def resize_images(control: Control) -> None:
    """A second kind of task, for the name filter."""
    await stepper(control, "resizing")


async def until_finished(control: Control) -> None:
    """Run until the test sets ``control.finish``."""
    while not (control.finish.is_set() or control.stop.is_set()):
        await anyio.sleep(0.02)


async def failing(secret: str) -> None:
    """Fail with a message that must not reach the page."""
    raise ValueError(secret)


async def generate_report(control: Control, pages: int, done: int) -> None:
    """A report stuck at ``done`` of ``pages``, for the screenshots."""
    current_task().set_progress(done / pages, f"page {done} of {pages}")
    while not control.stop.is_set():
        await anyio.sleep(0.02)


async def send_welcome_email() -> str:
    """Succeed at once, for the screenshots."""
    return "msg-1"


class Server:
    """The app under uvicorn in a thread, and its manager."""

    def __init__(self) -> None:
        import uvicorn
        from fastapi import FastAPI

        from bgtasks.fastapi import dashboard_router, lifespan

        self.manager = TaskManager(drain_timeout=0.1)
        app = FastAPI(lifespan=lifespan(self.manager))
        with pytest.MonkeyPatch.context() as patch:
            # Streams end every second, so the pages here reconnect often.
            patch.setattr(feed_module, "LIFETIME", 1.0)
            app.include_router(dashboard_router(self.manager))
        self.control = Control()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/dashboard"
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "uvicorn died"
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def close(self) -> None:
        self.control.stop.set()
        self.server.should_exit = True
        self.thread.join(timeout=15)
        assert not self.thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless, through Playwright (never a downloaded one)."""
    reason = _missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests: {reason}")
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(browser: Browser) -> Iterator[Server]:
    """The app with its dashboard, served for the whole module."""
    served = Server()
    yield served
    served.close()


@pytest.fixture
def page(browser: Browser, server: Server) -> Iterator[Page]:
    """A fresh page on the dashboard; fails the test on any script or CSP error."""
    context = browser.new_context()
    opened = context.new_page()
    opened.set_default_timeout(10_000)
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    opened.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}")
            if message.type == "error"
            else None
        ),
    )
    opened.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
    opened.goto(server.url)
    opened.wait_for_selector("#status.ok")  # the live stream said hello
    yield opened
    context.close()
    assert problems == []


def row(page: Page, task_id: str) -> Any:
    """The table row of one task."""
    return page.locator(f'tr[data-id="{task_id}"]')


def shows(locator: Any, text: str) -> None:
    """Wait until ``locator`` shows ``text``: the page updates as events arrive,
    so a one-off read may still see the previous state (pending, say)."""
    from playwright.sync_api import expect

    expect(locator).to_have_text(text)


def test_progress_moves_without_a_reload(server: Server, page: Page) -> None:
    """A running task appears by itself, and its progress bar follows the task."""
    handle = server.manager.spawn(stepper, server.control)
    line = row(page, handle.id)
    line.wait_for()
    shows(line.locator(".state"), "running")
    before = line.locator("progress").evaluate("bar => bar.value")
    server.control.step += 4
    page.wait_for_function(
        "([id, before]) => document.querySelector(`tr[data-id='${id}'] progress`)"
        ".value > before",
        arg=[handle.id, before],
    )
    shows(line.locator(".msg"), f"step {server.control.step} of 10")
    shows(page.locator("#scope"), "this process")  # no shared backend here


def test_xss_payload_shows_as_text(server: Server, page: Page) -> None:
    """A progress message made of HTML is shown as text, never run or rendered."""
    handle = server.manager.spawn(stepper, server.control, XSS)
    line = row(page, handle.id)
    line.locator(".msg").wait_for()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-id='${id}'] .msg`).textContent !== ''",
        arg=handle.id,
    )
    assert line.locator(".msg").inner_text() == XSS
    assert page.locator("img").count() == 0
    line.locator("button.name").click()
    page.locator("#detail-fields").get_by_text(XSS, exact=True).wait_for()
    assert page.locator("img").count() == 0


def test_error_message_hidden_by_default(server: Server, page: Page) -> None:
    """A failed task shows its error type; its message never reaches the page."""
    handle = server.manager.spawn(failing, "card declined for dana@example.com")
    line = row(page, handle.id)
    line.locator(".state-failed").wait_for()
    assert "ValueError" in line.inner_text()
    line.locator("button.name").click()
    details = page.locator("#detail-fields")
    details.get_by_text("ValueError").wait_for()
    assert "dana@example.com" not in page.content()


def test_filter_by_name_and_state(server: Server, page: Page) -> None:
    """The name filter keeps only matching tasks; the state filter too."""
    resize = server.manager.spawn(resize_images, server.control)
    step = server.manager.spawn(stepper, server.control)
    row(page, resize.id).wait_for()
    row(page, step.id).wait_for()
    page.get_by_label("Name contains").fill("resize")
    row(page, step.id).wait_for(state="detached")
    assert row(page, resize.id).count() == 1
    names = page.locator("#rows button.name").all_inner_texts()
    assert names
    assert all("resize" in name for name in names)
    page.get_by_role("button", name="Clear").click()
    row(page, step.id).wait_for()
    page.get_by_label("State", exact=True).select_option("failed")
    row(page, step.id).wait_for(state="detached")
    assert page.locator("#rows .state-running").count() == 0
    # Watching the running ones: a task that finishes leaves the table.
    finishing = server.manager.spawn(until_finished, server.control)
    page.get_by_label("State", exact=True).select_option("running")
    row(page, finishing.id).wait_for()
    server.control.finish.set()
    row(page, finishing.id).wait_for(state="detached")
    assert row(page, step.id).count() == 1


def test_cancel_after_confirmation(server: Server, page: Page) -> None:
    """Cancel asks first; once confirmed, the task turns cancelled on the page."""
    handle = server.manager.spawn(stepper, server.control)
    line = row(page, handle.id)
    line.get_by_role("button", name="Cancel").click()
    confirm = page.locator("#confirm")
    assert confirm.is_visible()
    page.locator("#confirm-no").click()
    shows(line.locator(".state"), "running")
    line.get_by_role("button", name="Cancel").click()
    page.locator("#confirm-yes").click()
    line.locator(".state-cancelled").wait_for()
    info = server.manager.get(handle.id)
    assert info is not None
    assert info.state.value == "cancelled"
    assert line.get_by_role("button", name="Cancel").is_hidden()


def test_a_late_cancel_reply_keeps_it_cancelled(server: Server, page: Page) -> None:
    """The cancel request's reply is a snapshot taken before the task stopped.
    Held back until the event stream has shown the task cancelled, it must not
    turn the row back to running with its Cancel button: that window once
    failed CI (test_cancel_after_confirmation's last line)."""
    from playwright.sync_api import Response, Route, expect

    held: list[tuple[Route, Any]] = []

    def hold(route: Route) -> None:
        held.append((route, route.fetch()))  # the server cancels the task now

    handle = server.manager.spawn(stepper, server.control)
    line = row(page, handle.id)
    shows(line.locator(".state"), "running")
    page.route("**/cancel", hold)
    line.get_by_role("button", name="Cancel").click()
    page.locator("#confirm-yes").click()
    line.locator(".state-cancelled").wait_for()
    assert len(held) == 1
    route, reply = held[0]
    stale = reply.json()
    assert stale["id"] == handle.id
    # As the server sends it, unless the task already stopped there (then
    # make it what a reply taken a moment earlier says).
    stale.update(state="running", finished_at=None)
    with page.expect_response("**/cancel") as answered:
        route.fulfill(response=reply, json=stale)
    response: Response = answered.value
    assert response.status == 202
    # Once the status says so, the reply has been applied (the same JS turn).
    # Read at once: a later refresh would hide a wrong revert.
    expect(page.locator("#status")).to_contain_text("Cancel requested")
    assert line.locator(".state").inner_text() == "cancelled"
    assert line.get_by_role("button", name="Cancel").is_hidden()


def test_a_reused_id_shows_its_new_run(server: Server, page: Page) -> None:
    """A finished row does not go back to running, except for a new task that
    reuses the id: that one is newer, and the page follows it."""
    task_id = "nightly-report"
    first = Control()
    server.manager.spawn_with_id(task_id, until_finished, first)
    line = row(page, task_id)
    shows(line.locator(".state"), "running")
    first.finish.set()
    shows(line.locator(".state"), "succeeded")
    again = Control()
    server.manager.spawn_with_id(task_id, until_finished, again)
    shows(line.locator(".state"), "running")
    again.finish.set()
    shows(line.locator(".state"), "succeeded")


def test_stays_live_across_stream_ends(server: Server, page: Page) -> None:
    """When a stream ends (as each does), the page reconnects and stays live."""
    with page.expect_request(lambda request: request.url.endswith("/api/events")):
        pass  # the next stream, opened by EventSource itself
    page.wait_for_selector("#status.ok")
    handle = server.manager.spawn(stepper, server.control)
    row(page, handle.id).wait_for()
    assert page.locator("#status").inner_text() == "Live"


def test_pause_stops_updates(server: Server, page: Page) -> None:
    """While paused, new tasks do not appear; on resume they do."""
    page.get_by_role("button", name="Pause updates").click()
    assert page.locator("#status").inner_text() == "Paused"
    handle = server.manager.spawn(stepper, server.control)
    page.wait_for_timeout(600)  # a few coalescing windows: nothing may arrive
    assert row(page, handle.id).count() == 0
    page.get_by_role("button", name="Resume updates").click()
    row(page, handle.id).wait_for()


def test_screenshots(server: Server, browser: Browser) -> None:
    """The page renders in light and dark; BGTASKS_SCREENSHOTS saves the images."""
    target = os.environ.get("BGTASKS_SCREENSHOTS")
    for _ in range(3):
        server.manager.spawn(send_welcome_email)
    for done in (2, 5, 7):
        server.manager.spawn(generate_report, server.control, 8, done)
    for scheme in ("light", "dark"):
        context = browser.new_context(
            color_scheme=scheme, viewport={"width": 1280, "height": 720}
        )
        shown = context.new_page()
        shown.goto(server.url)
        shown.wait_for_selector("#status.ok")
        shown.locator("#rows tr").first.wait_for()
        background = shown.evaluate("getComputedStyle(document.body).backgroundColor")
        assert (background == "rgb(255, 255, 255)") == (scheme == "light")
        if target:
            name = "dashboard.png" if scheme == "light" else "dashboard-dark.png"
            shown.screenshot(path=str(Path(target) / name))
        context.close()
