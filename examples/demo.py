"""Drive the example app over real HTTP and print what happens: ``nox -s demo``.

Starts ``examples/app.py`` under uvicorn on 127.0.0.1 (a free port, in a
thread), then, with httpx: polls a report to completion with its progress,
registers a user whose welcome email needs retries, registers them again
(deduplicated), makes thumbnails, cancels a long report and a thumbnail job, and
shuts the server down gracefully (drain, then cancel). Exits 1 if anything is
not as expected. bgtasks' log lines (from the app's ``LOGGING``) go to stderr.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parent))
from app import Settings, create_app

FINISHED = {"succeeded", "failed", "cancelled"}
# A few bytes that say "PNG": the fake thumbnailer does not decode them.
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64
SETTINGS = Settings(
    smtp_failures=2,
    report_page_seconds=0.15,
    thumbnail_step_seconds=0.04,
    drain_timeout=1.0,
)


class DemoError(Exception):
    """Something the demo checks is not what it expected."""


def expect(condition: bool, what: str) -> None:
    """Stop the demo with ``what`` unless ``condition`` holds."""
    if not condition:
        raise DemoError(what)


def poll(
    client: httpx.Client,
    task_id: str,
    say: Callable[[str], None],
    *,
    until: Callable[[dict[str, Any]], bool] = lambda task: task["state"] in FINISHED,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """GET the task until ``until`` holds, printing each new progress message."""
    deadline = time.monotonic() + timeout
    seen: str | None = None
    while True:
        response = client.get(f"/tasks/{task_id}")
        expect(response.status_code == 200, f"GET /tasks/{task_id}: {response.text}")
        task: dict[str, Any] = response.json()
        if task["message"] and task["message"] != seen:
            seen = task["message"]
            say(f"  {task['state']:<9} {task['progress']:>4.0%}  {seen}")
        if until(task):
            return task
        expect(time.monotonic() < deadline, f"task {task_id} stuck: {task}")
        time.sleep(0.02)


def started(task: dict[str, Any]) -> bool:
    """The task reported some progress, or already finished."""
    return bool(task["progress"]) or task["state"] in FINISHED


def report_to_completion(client: httpx.Client, say: Callable[[str], None]) -> None:
    """A report is created, polled with its progress, and succeeds."""
    response = client.post("/reports", params={"user_id": 7, "pages": 4})
    expect(response.status_code == 202, f"POST /reports: {response.text}")
    task_id = response.json()["task_id"]
    say(f"1. report: POST /reports -> 202, task {task_id}")
    task = poll(client, task_id, say)
    expect(task["state"] == "succeeded", f"report: {task}")
    expect(task["progress"] == 1.0, f"report progress: {task}")
    expect(task["result"] == {"report_id": "activity-7", "pages": 4}, f"{task}")
    say(f"  succeeded -> {json.dumps(task['result'])}")


def register(client: httpx.Client, user: dict[str, str], code: int) -> dict[str, Any]:
    """POST /users and check the status code."""
    response = client.post("/users", json=user)
    expect(response.status_code == code, f"POST /users: {response.status_code}")
    body: dict[str, Any] = response.json()
    return body


def welcome_email_retried_then_deduplicated(
    client: httpx.Client, say: Callable[[str], None]
) -> None:
    """A flaky SMTP send is retried and delivered once, even when registered twice."""
    ada = {"email": "ada@example.com", "username": "ada"}
    say("2. welcome email (the fake SMTP server refuses its first 2 sends)")
    first = register(client, ada, 201)
    say("  POST /users -> 201")
    task = poll(client, first["welcome_email"]["task_id"], say)
    expect(task["state"] == "succeeded", f"welcome email: {task}")
    expect(task["attempt"] == 3, f"welcome email attempts: {task}")
    say(f"  succeeded on attempt {task['attempt']}, message {task['result']}")
    box = client.get("/outbox").json()
    expect(box["attempts"] == 3 and len(box["delivered"]) == 1, f"outbox: {box}")

    say("3. duplicate registration (a client retry)")
    second = register(client, ada, 200)
    say("  POST /users -> 200")
    again = poll(client, second["welcome_email"]["task_id"], say)
    expect(again["state"] == "succeeded", f"duplicate: {again}")
    expect(again["result"] == task["result"], f"duplicate result: {again}")
    box = client.get("/outbox").json()
    expect(box["attempts"] == 3 and len(box["delivered"]) == 1, f"outbox: {box}")
    say(f"  deduplicated: same message {again['result']}, 1 email delivered in total")


def upload(client: httpx.Client) -> str:
    """Upload the demo image; the thumbnail task's id."""
    files = {"file": ("cat.png", IMAGE, "image/png")}
    response = client.post("/images", files=files)
    expect(response.status_code == 202, f"POST /images: {response.text}")
    return str(response.json()["task_id"])


def thumbnails(client: httpx.Client, say: Callable[[str], None]) -> None:
    """A sync task makes thumbnails in the thread pool, with progress."""
    say("4. thumbnails: POST /images -> 202 (a sync task in the thread pool)")
    task = poll(client, upload(client), say)
    expect(task["state"] == "succeeded", f"thumbnails: {task}")
    expect(set(task["result"]) == {"small", "medium", "large"}, f"{task}")
    say(f"  succeeded -> {json.dumps(task['result'])}")


def cancel(
    client: httpx.Client, task_id: str, label: str, say: Callable[[str], None]
) -> None:
    """Cancel a running task through the API and see it end CANCELLED."""
    poll(client, task_id, say, until=started)
    response = client.delete(f"/tasks/{task_id}")
    expect(response.status_code == 202, f"DELETE {label}: {response.text}")
    task = poll(client, task_id, lambda line: None)
    expect(task["state"] == "cancelled", f"{label}: {task}")
    say(f"  DELETE -> 202; {label} cancelled at {task['progress']:.0%}")
    response = client.delete(f"/tasks/{task_id}")
    expect(response.status_code == 409, f"second DELETE {label}: {response.text}")


def cancellations(client: httpx.Client, say: Callable[[str], None]) -> None:
    """A long async report and a sync thumbnail job are cancelled over HTTP."""
    say("5. cancel: a 100-page report, and a thumbnail job (stops at checkpoint())")
    response = client.post("/reports", params={"user_id": 8, "pages": 100})
    expect(response.status_code == 202, f"POST /reports: {response.text}")
    cancel(client, response.json()["task_id"], "report", say)
    cancel(client, upload(client), "thumbnails", say)


def run_scenarios(client: httpx.Client, say: Callable[[str], None]) -> None:
    """Every scenario before the shutdown, in order."""
    report_to_completion(client, say)
    welcome_email_retried_then_deduplicated(client, say)
    thumbnails(client, say)
    cancellations(client, say)


def start_before_shutdown(client: httpx.Client) -> tuple[str, str]:
    """Start a short report (it drains) and a long one (it is cancelled)."""
    short = client.post("/reports", params={"user_id": 9, "pages": 2}).json()
    long = client.post("/reports", params={"user_id": 10, "pages": 500}).json()
    poll(client, long["task_id"], lambda line: None, until=started)
    return short["task_id"], long["task_id"]


def check_shutdown(
    app: FastAPI, short: str, long: str, say: Callable[[str], None]
) -> None:
    """After shutdown the short report succeeded and the long one was cancelled."""
    manager = app.state.bgtasks_manager
    expect(not manager.running, "the manager still runs after shutdown")
    drained, cancelled = manager.get(short), manager.get(long)
    expect(drained.state.value == "succeeded", f"short report: {drained}")
    expect(cancelled.state.value == "cancelled", f"long report: {cancelled}")
    say(
        f"  short report {drained.state.value} while draining; long report "
        f"{cancelled.state.value} after the {SETTINGS.drain_timeout:g} s drain timeout"
    )


def serve(app: FastAPI) -> tuple[uvicorn.Server, threading.Thread, str]:
    """Start uvicorn in a thread on a free loopback port; wait until it is up."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))  # port 0: the OS picks a free one, no race
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        expect(
            thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        )
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{port}"


def main() -> int:
    """Run the demo; 0 when everything went as expected."""
    began = time.monotonic()
    app = create_app(SETTINGS)
    server, thread, url = serve(app)
    print(f"bgtasks demo: the example app runs under uvicorn at {url}")
    print(f"  its task dashboard: {url}/dashboard")
    try:
        with httpx.Client(base_url=url, timeout=10) as client:
            run_scenarios(client, print)
            short, long = start_before_shutdown(client)
        print("6. shutdown: one short and one 500-page report still running")
        server.should_exit = True
        thread.join(timeout=15)
        expect(not thread.is_alive(), "uvicorn did not stop")
        check_shutdown(app, short, long, print)
    except DemoError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    print(f"OK: everything as expected, in {time.monotonic() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
