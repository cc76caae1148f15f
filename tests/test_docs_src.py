"""Every complete file under docs_src/ runs, and does what its docs page says.

The tutorial's and the recipes' pages include these files (``--8<--``), so the
tests below are the proof of each page's claims: the retry step really retries,
the idempotent step really runs once, the tracking step's status URL answers.
Each file is imported fresh per test, as uvicorn would import it.
"""

# No `from __future__ import annotations`: FastAPI must resolve the apps' annotations.

import importlib
import itertools
import json
import logging
import logging.config
import re
import smtplib
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Literal

import anyio
import anyio.to_thread
import fastapi
import httpx
import pytest

from bgtasks import TaskEvent, TaskManager, TaskState, current_task
from bgtasks.testing import RetryRecorder

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parent.parent
DOCS_SRC = ROOT / "docs_src"
if str(ROOT) not in sys.path:  # the files that import their neighbours: a package
    sys.path.insert(0, str(ROOT))
Backend = Literal["asyncio", "trio"]
_fresh = itertools.count()


def load(relative: str, name: str | None = None) -> Any:
    """Import docs_src/<relative> as a new module, as ``uvicorn module:app`` would.

    ``name`` is the module's name (by default a fresh one): two worker processes
    import the same name, and ``@idempotent`` namespaces its keys by it.
    Typed Any: the tests replace the module's stand-ins for the outside world.
    """
    path = DOCS_SRC / relative
    name = name or f"docs_src_{path.stem}_{next(_fresh)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    """The anyio backend of this run, typed for ``TestClient(backend=...)``."""
    return "trio" if anyio_backend == "trio" else "asyncio"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tutorial writes ./log.txt: keep it in a temporary directory."""
    monkeypatch.chdir(tmp_path)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` from a worker thread, for at most 5 s."""
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.001)


class MailServer:
    """A fake of the tutorial's ``connect_to_mail_server``, counting its calls.

    ``failures`` are raised by the first calls, in order; ``on_call(n)`` runs
    at call number ``n`` (from 1), in the task's thread, to hold it there.
    """

    def __init__(
        self,
        failures: list[Exception] | None = None,
        on_call: Callable[[int], None] | None = None,
    ) -> None:
        self.failures = list(failures or [])
        self.on_call = on_call
        self.calls = 0
        self.timeouts: list[float | None] = []
        self._lock = threading.Lock()

    def __call__(self, timeout: float | None = None) -> None:
        with self._lock:
            self.calls += 1
            number = self.calls
            self.timeouts.append(timeout)
            failure = self.failures.pop(0) if self.failures else None
        if self.on_call is not None:
            self.on_call(number)
        if failure is not None:
            raise failure


def busy() -> ConnectionError:
    """What the tutorial's mail server raises when it is busy."""
    return ConnectionError("421 mail server busy, try again later")


NOTIFICATION = "notification for foo@example.com: some notification"


# --- The tutorial, step by step -------------------------------------------------


def test_step00_is_fastapis_example(backend: Backend) -> None:
    """Step 0 is FastAPI's own example and behaves as FastAPI's test says."""
    step = load("tutorial/step00_fastapi.py")
    with TestClient(step.app, backend=backend) as client:
        response = client.post("/send-notification/foo@example.com")
    assert response.status_code == 200, response.text
    assert response.json() == {"message": "Notification sent in the background"}
    assert Path("log.txt").read_text() == NOTIFICATION


def test_step01_retries_a_busy_mail_server(
    backend: Backend, instant_retries: RetryRecorder
) -> None:
    """Step 1: two refused connections are retried, with exponential waits."""
    step = load("tutorial/step01_retry.py")
    step.connect_to_mail_server = server = MailServer([busy(), busy()])
    with TestClient(step.app, backend=backend) as client:
        response = client.post("/send-notification/foo@example.com")
    assert response.status_code == 200
    assert Path("log.txt").read_text() == NOTIFICATION
    assert server.calls == 3
    assert instant_retries.attempts == [1, 2]
    assert instant_retries.delays == [0.5, 1.0]  # exponential(initial=0.5)


def test_step01_gives_up_after_five_attempts(
    backend: Backend, instant_retries: RetryRecorder
) -> None:
    """Step 1: after 5 attempts the last ConnectionError reaches the server."""
    step = load("tutorial/step01_retry.py")
    step.connect_to_mail_server = server = MailServer([busy()] * 5)
    with (
        TestClient(step.app, backend=backend) as client,
        pytest.raises(ConnectionError, match="421"),
    ):
        client.post("/send-notification/foo@example.com")
    assert server.calls == 5
    assert instant_retries.attempts == [1, 2, 3, 4]
    assert not Path("log.txt").exists()


def test_step02_gives_each_attempt_its_own_deadline(
    backend: Backend, instant_retries: RetryRecorder
) -> None:
    """Step 2: the connection gets the attempt's time left; TimeoutError is retried."""
    step = load("tutorial/step02_timeout.py")
    step.connect_to_mail_server = server = MailServer([TimeoutError("timed out")])
    with TestClient(step.app, backend=backend) as client:
        client.post("/send-notification/foo@example.com")
    assert Path("log.txt").read_text() == NOTIFICATION
    assert server.calls == 2
    assert [type(e.exception) for e in instant_retries.events] == [TimeoutError]
    for left in server.timeouts:  # a fresh 10 s for each attempt
        assert left is not None
        assert 9 < left <= 10


def test_step03_logs_each_notification(
    backend: Backend,
    instant_retries: RetryRecorder,
    records: list[logging.LogRecord],
) -> None:
    """Step 3: start, the retry and success are logged, without the address."""
    step = load("tutorial/step03_logged.py")
    step.connect_to_mail_server = MailServer([busy()])
    with TestClient(step.app, backend=backend) as client:
        client.post("/send-notification/foo@example.com")
    messages = [(r.levelname, r.getMessage()) for r in records]
    assert [level for level, _ in messages] == ["INFO", "WARNING", "INFO"]
    assert messages[0][1] == "write_notification started"
    assert messages[1][1].startswith(
        "bgtasks.retry: write_notification attempt 1 failed (ConnectionError); "
    )
    assert re.fullmatch(r"write_notification succeeded in \d+\.\d{3} s", messages[2][1])
    assert not any("foo@example.com" in message for _, message in messages)


LOGGERS = ("bgtasks", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Undo what a dictConfig does to the loggers it names."""
    saved = {
        name: (logger.handlers[:], logger.level, logger.propagate, logger.disabled)
        for name in LOGGERS
        for logger in [logging.getLogger(name)]
    }
    yield
    for name, (handlers, level, propagate, disabled) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.level, logger.propagate, logger.disabled = level, propagate, disabled


def test_step03_log_config_shows_task_records_under_uvicorn(
    restored_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """Step 3's log_config.json keeps uvicorn's loggers and prints bgtasks' INFO."""
    config = json.loads((DOCS_SRC / "tutorial/log_config.json").read_text())
    logging.config.dictConfig(config)
    step = load("tutorial/step03_logged.py")
    step.connect_to_mail_server = MailServer()
    step.write_notification("foo@example.com", message="hi")
    logging.getLogger("uvicorn.error").info("Application startup complete.")
    err = capsys.readouterr().err
    assert "INFO     write_notification started" in err
    assert "INFO     write_notification succeeded in" in err
    assert "INFO:     Application startup complete." in err


def test_step04_sends_a_repeated_notification_once(
    backend: Backend, idempotency_store: object
) -> None:
    """Step 4: a client retry of the same request does not notify twice."""
    step = load("tutorial/step04_idempotent.py")
    step.connect_to_mail_server = server = MailServer()
    with TestClient(step.app, backend=backend) as client:
        client.post("/send-notification/foo@example.com")
        client.post("/send-notification/foo@example.com")  # the client retried
        assert server.calls == 1
        client.post("/send-notification/bar@example.com")  # someone else
    assert server.calls == 2


def test_step04_runs_again_after_a_failure(
    backend: Backend, instant_retries: RetryRecorder, idempotency_store: object
) -> None:
    """Step 4: a notification that finally failed is not recorded as sent."""
    step = load("tutorial/step04_idempotent.py")
    step.connect_to_mail_server = server = MailServer([busy()] * 5)
    with TestClient(step.app, backend=backend) as client:
        with pytest.raises(ConnectionError):
            client.post("/send-notification/foo@example.com")
        client.post("/send-notification/foo@example.com")
    assert server.calls == 6
    assert Path("log.txt").read_text() == NOTIFICATION


def test_step05_returns_a_status_url_that_answers(
    backend: Backend, idempotency_store: object
) -> None:
    """Step 5: the 202 names the task, and its status URL says it succeeded."""
    step = load("tutorial/step05_tracking.py")
    step.connect_to_mail_server = MailServer()
    with TestClient(step.app, backend=backend) as client:
        response = client.post("/send-notification/foo@example.com")
        assert response.status_code == 202
        body = response.json()
        assert body["status_url"] == f"/tasks/{body['task_id']}"
        status = client.get(body["status_url"])
    assert status.status_code == 200
    assert status.json()["state"] == "succeeded"
    assert status.json()["name"] == "write_notification"
    assert Path("log.txt").read_text() == NOTIFICATION


def test_step05_records_a_failure_instead_of_raising(
    backend: Backend, instant_retries: RetryRecorder, idempotency_store: object
) -> None:
    """Step 5: a notification that gave up is FAILED, by its type only."""
    step = load("tutorial/step05_tracking.py")
    step.connect_to_mail_server = MailServer([busy()] * 5)
    with TestClient(step.app, backend=backend) as client:
        body = client.post("/send-notification/foo@example.com").json()
        status = client.get(body["status_url"]).json()
    assert status["state"] == "failed"
    assert status["error"] == {"type": "ConnectionError", "message": None}
    assert status["attempt"] == 5


class Held:
    """Holds the task's thread at one call of the fake mail server until released."""

    def __init__(self, at: int) -> None:
        self.at = at
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, number: int) -> None:
        if number == self.at:
            self.reached.set()
            assert self.release.wait(5), "the test never released the task"


def finished(manager: TaskManager, task_id: str) -> threading.Event:
    """An event set when the task reaches a final state."""
    done = threading.Event()

    def on_event(event: TaskEvent) -> None:
        if event.task_id == task_id and event.new_state.is_finished:
            done.set()

    manager.subscribe(on_event)
    return done


def start_broadcast(
    client: TestClient, step: ModuleType
) -> tuple[str, threading.Event]:
    """POST /notify-subscribers; the task's id and its 'finished' event."""
    response = client.post("/notify-subscribers", params={"message": "new post"})
    assert response.status_code == 202
    task_id: str = response.json()["task_id"]
    return task_id, finished(step.manager, task_id)


def test_step06_reports_progress_while_it_runs(
    backend: Backend, idempotency_store: object
) -> None:
    """Step 6: the status URL shows the broadcast's progress while it runs."""
    step = load("tutorial/step06_progress.py")
    held = Held(at=3)
    step.connect_to_mail_server = server = MailServer(on_call=held)
    with TestClient(step.app, backend=backend) as client:
        task_id, done = start_broadcast(client, step)
        assert held.reached.wait(5)
        running = client.get(f"/tasks/{task_id}").json()
        held.release.set()
        assert done.wait(5)
        final = client.get(f"/tasks/{task_id}").json()
    assert (running["state"], running["progress"], running["message"]) == (
        "running",
        0.1,
        "2 sent",
    )
    assert (final["state"], final["progress"], final["message"]) == (
        "succeeded",
        1.0,
        "20 sent",
    )
    assert final["result"] == {"sent": 20}
    assert server.calls == 20


def test_step07_cancels_a_broadcast_with_delete(
    backend: Backend, idempotency_store: object
) -> None:
    """Step 7: DELETE stops the broadcast at its next checkpoint()."""
    step = load("tutorial/step07_cancel.py")
    held = Held(at=3)
    step.connect_to_mail_server = server = MailServer(on_call=held)
    with TestClient(step.app, backend=backend) as client:
        task_id, done = start_broadcast(client, step)
        assert held.reached.wait(5)
        cancelled = client.delete(f"/tasks/{task_id}")
        held.release.set()
        assert done.wait(5)
        final = client.get(f"/tasks/{task_id}").json()
        again = client.delete(f"/tasks/{task_id}")
    assert cancelled.status_code == 202
    assert cancelled.json()["cancel_requested"] is True
    assert (final["state"], final["message"]) == ("cancelled", "2 sent")
    assert server.calls == 3  # the third email was stopped before it was written
    assert again.status_code == 409
    assert again.json() == {"detail": "task already finished", "state": "cancelled"}


def test_step08_shutdown_waits_for_a_running_broadcast(
    backend: Backend, idempotency_store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 8: a broadcast still running at shutdown finishes within the drain."""
    monkeypatch.setenv("DRAIN_TIMEOUT", "5")
    step = load("tutorial/step08_shutdown.py")

    def until_shutdown(number: int) -> None:
        if number == 1:
            wait_until(lambda: not step.manager.running, "the shutdown")

    step.connect_to_mail_server = server = MailServer(on_call=until_shutdown)
    with TestClient(step.app, backend=backend) as client:
        task_id, _ = start_broadcast(client, step)
    info = step.manager.get(task_id)
    assert info is not None
    assert info.state is TaskState.SUCCEEDED
    assert server.calls == 20


def test_step08_shutdown_cancels_what_outlasts_the_drain(
    backend: Backend, idempotency_store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 8: past DRAIN_TIMEOUT the broadcast is cancelled; nothing stays RUNNING."""
    monkeypatch.setenv("DRAIN_TIMEOUT", "0.05")
    step = load("tutorial/step08_shutdown.py")

    def until_cancelled(number: int) -> None:
        if number == 2:
            task = current_task()
            wait_until(lambda: task.cancel_requested, "the cancellation")

    step.connect_to_mail_server = server = MailServer(on_call=until_cancelled)
    with TestClient(step.app, backend=backend) as client:
        task_id, _ = start_broadcast(client, step)
    info = step.manager.get(task_id)
    assert info is not None
    assert (info.state, info.message) == (TaskState.CANCELLED, "1 sent")
    assert server.calls == 2
    assert step.manager.list(state=TaskState.RUNNING) == []


@pytest.fixture
def on_redis(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point step 9 at the test run's redis-server, under a prefix of this test.

    Skips without coredis (the tests_lowest session) before it starts a server.
    """
    pytest.importorskip("coredis", reason="the redis extra (bgtasks[redis])")
    monkeypatch.setenv("BGTASKS_REDIS_URL", request.getfixturevalue("redis_url"))
    monkeypatch.setenv("BGTASKS_REDIS_PREFIX", request.getfixturevalue("redis_prefix"))


def poll(
    client: TestClient, task_id: str, until: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """GET /tasks/{id} until ``until`` holds: another worker's writes land shortly."""
    found: dict[str, Any] = {}

    def check() -> bool:
        nonlocal found
        answer = client.get(f"/tasks/{task_id}")
        found = answer.json() if answer.status_code == 200 else {}
        return bool(found) and until(found)

    wait_until(check, f"task {task_id} through the other worker")
    return found


def two_workers() -> tuple[Any, Any]:
    """Step 9 imported twice, as two uvicorn workers would: two apps, one Redis."""
    a = load("tutorial/step09_workers.py", name="step09_workers")
    b = load("tutorial/step09_workers.py", name="step09_workers")
    assert a.manager.backend is not None
    assert b.manager.backend is not None
    return a, b


def test_step09_status_answers_on_every_worker_and_runs_once(
    backend: Backend, on_redis: None
) -> None:
    """Step 9: a task of worker A reads through B; B's duplicate replays A's run."""
    a, b = two_workers()
    a.connect_to_mail_server = b.connect_to_mail_server = server = MailServer()
    with (
        TestClient(a.app, backend=backend) as on_a,
        TestClient(b.app, backend=backend) as on_b,
    ):
        sent = on_a.post("/send-notification/foo@example.com").json()
        seen_by_b = poll(on_b, sent["task_id"], lambda t: t["state"] == "succeeded")
        again = on_b.post("/send-notification/foo@example.com").json()
        replayed = poll(on_a, again["task_id"], lambda t: t["state"] == "succeeded")
        listed = {task["id"] for task in on_b.get("/tasks").json()["tasks"]}
    assert seen_by_b["name"] == "write_notification"
    assert b.manager.get(sent["task_id"]) is None  # B never ran it
    assert replayed["name"] == "write_notification"
    assert server.calls == 1  # the duplicate, on the other worker, did not send
    assert listed == {sent["task_id"], again["task_id"]}


def test_step09_cancel_reaches_the_worker_that_runs_the_task(
    backend: Backend, on_redis: None
) -> None:
    """Step 9: DELETE through B stops A's broadcast at its next checkpoint()."""
    a, b = two_workers()
    held = Held(at=3)
    a.connect_to_mail_server = server = MailServer(on_call=held)
    with (
        TestClient(a.app, backend=backend) as on_a,
        TestClient(b.app, backend=backend) as on_b,
    ):
        task_id, done = start_broadcast(on_a, a)
        assert held.reached.wait(5)
        poll(on_b, task_id, lambda t: t["state"] == "running")
        cancelled = on_b.delete(f"/tasks/{task_id}")
        wait_until(
            lambda: (
                (info := a.manager.get(task_id)) is not None and info.cancel_requested
            ),
            "the cancel to reach worker A",
        )
        held.release.set()
        assert done.wait(5)
        final = poll(on_b, task_id, lambda t: t["state"] == "cancelled")
    assert cancelled.status_code == 202
    assert final["message"] == "2 sent"
    assert server.calls == 3  # the third email was stopped before it was written


def test_step09_without_redis_stays_in_memory(
    backend: Backend, idempotency_store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 9: without BGTASKS_REDIS_URL it is step 8's one-process app."""
    monkeypatch.delenv("BGTASKS_REDIS_URL", raising=False)
    step = load("tutorial/step09_workers.py")
    step.connect_to_mail_server = MailServer()
    assert step.manager.backend is None
    assert step.store is None
    with TestClient(step.app, backend=backend) as client:
        task_id = client.post("/send-notification/foo@example.com").json()["task_id"]
        status = client.get(f"/tasks/{task_id}").json()
    assert status["state"] == "succeeded"


def test_step10_dashboard_and_status_routes_need_the_admin_token(
    backend: Backend, idempotency_store: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 10: without the token the page, its data and the status API are 403."""
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    step = load("tutorial/step10_dashboard.py")
    step.connect_to_mail_server = MailServer()
    admin = {"X-Admin-Token": "s3cret"}
    with TestClient(step.app, backend=backend) as client:
        task_id = client.post("/send-notification/foo@example.com").json()["task_id"]
        refused = [
            client.get("/dashboard").status_code,
            client.get("/dashboard/api/tasks").status_code,
            client.get("/dashboard/api/stats").status_code,
            client.post(
                f"/dashboard/api/tasks/{task_id}/cancel",
                headers={"X-Bgtasks-Action": "cancel"},
            ).status_code,
            client.get(f"/tasks/{task_id}").status_code,
        ]
        page = client.get("/dashboard", headers=admin)
        listed = client.get("/dashboard/api/tasks", headers=admin).json()
    assert refused == [403] * 5
    assert page.status_code == 200
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert task_id in {task["id"] for task in listed["tasks"]}


def test_step10_dashboard_lists_every_worker_s_tasks(
    backend: Backend, on_redis: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Step 10 on step 9's Redis: B's dashboard lists, and can cancel, A's task."""
    monkeypatch.setenv("ADMIN_TOKEN", "s3cret")
    a = load("tutorial/step10_dashboard.py", name="step10_dashboard")
    b = load("tutorial/step10_dashboard.py", name="step10_dashboard")
    held = Held(at=3)
    a.connect_to_mail_server = MailServer(on_call=held)
    admin = {"X-Admin-Token": "s3cret"}
    with (
        TestClient(a.app, backend=backend, headers=admin) as on_a,
        TestClient(b.app, backend=backend, headers=admin) as on_b,
    ):
        task_id, done = start_broadcast(on_a, a)
        assert held.reached.wait(5)
        poll(on_b, task_id, lambda t: t["state"] == "running")
        listed = on_b.get("/dashboard/api/tasks").json()["tasks"]
        cancel = on_b.post(
            f"/dashboard/api/tasks/{task_id}/cancel",
            headers={"X-Bgtasks-Action": "cancel"},
        )
        wait_until(
            lambda: (
                (info := a.manager.get(task_id)) is not None and info.cancel_requested
            ),
            "the dashboard's cancel to reach worker A",
        )
        held.release.set()
        assert done.wait(5)
    assert task_id in {task["id"] for task in listed}
    assert cancel.status_code == 202


# --- Recipes ------------------------------------------------------------------


def test_email_retries_a_4xx_answer_and_sends_once(
    backend: Backend, instant_retries: RetryRecorder, idempotency_store: object
) -> None:
    """Email: a 421 is retried; signing up twice sends one welcome email."""
    recipe = load("recipes/email.py")
    real_send = recipe.smtp_send
    answers = [smtplib.SMTPResponseException(421, b"try again later")]

    async def flaky_send(to: str, subject: str) -> None:
        if answers:
            raise answers.pop()
        await real_send(to, subject)

    recipe.smtp_send = flaky_send
    with TestClient(recipe.app, backend=backend) as client:
        first = client.post("/users", json={"email": "ada@example.com"}).json()
        again = client.post("/users", json={"email": "ada@example.com"}).json()
        status = client.get(first["welcome_email"]).json()
    assert first["user_id"] == again["user_id"] == 1
    assert recipe.outbox == [("ada@example.com", "Welcome aboard!")]
    assert instant_retries.attempts == [1]
    assert status["state"] == "succeeded"


def test_email_does_not_retry_a_5xx_answer(
    backend: Backend, instant_retries: RetryRecorder, idempotency_store: object
) -> None:
    """Email: a 550 will not change, so it fails at once, by type only."""
    recipe = load("recipes/email.py")

    async def refused(to: str, subject: str) -> None:
        raise smtplib.SMTPResponseException(550, b"no such user")

    recipe.smtp_send = refused
    with TestClient(recipe.app, backend=backend) as client:
        created = client.post("/users", json={"email": "nobody@example.com"}).json()
        status = client.get(created["welcome_email"]).json()
    assert status["state"] == "failed"
    assert status["error"] == {"type": "SMTPResponseException", "message": None}
    assert instant_retries.attempts == []


def test_email_idempotency_key_header_dedupes_client_retries(
    backend: Backend, idempotency_store: object
) -> None:
    """Email: the same Idempotency-Key sends once; a new key sends again."""
    recipe = load("recipes/email.py")
    with TestClient(recipe.app, backend=backend) as client:
        for key in ["key-0001-aaaa", "key-0001-aaaa", "key-0002-bbbb"]:
            response = client.post(
                "/password-resets",
                params={"email": "ada@example.com"},
                headers={"Idempotency-Key": key},
            )
            assert response.status_code == 202
        missing = client.post("/password-resets", params={"email": "ada@example.com"})
    assert recipe.outbox == [("ada@example.com", "Reset your password")] * 2
    assert missing.status_code == 422


def test_uploads_make_thumbnails_with_progress(backend: Backend) -> None:
    """Uploads: the upload is stored, thumbnails made, progress reaches 1.0."""
    recipe = load("recipes/uploads.py")
    with TestClient(recipe.app, backend=backend) as client:
        response = client.post(
            "/images", files={"file": ("cat.png", b"\x89PNG" * 100, "image/png")}
        )
        assert response.status_code == 202
        body = response.json()
    info = recipe.manager.list()[0]
    assert body["status_url"] == f"/tasks/{info.id}"
    assert (info.state, info.progress, info.message) == (
        TaskState.SUCCEEDED,
        1.0,
        "large done",
    )
    assert info.result == {
        name: f"/images/{body['image_id']}/{name}"
        for name in ("small", "medium", "large")
    }
    assert len(recipe.images[f"{body['image_id']}/small"]) == 15


def test_uploads_refuse_what_is_not_an_image(backend: Backend) -> None:
    """Uploads: a non-image is a 415 and starts no task."""
    recipe = load("recipes/uploads.py")
    with TestClient(recipe.app, backend=backend) as client:
        response = client.post(
            "/images", files={"file": ("notes.txt", b"hello", "text/plain")}
        )
    assert response.status_code == 415
    assert recipe.manager.list() == []


@pytest.mark.anyio
async def test_reports_client_polls_until_done() -> None:
    """Reports: the client's wait_for polls the status URL to the result."""
    recipe = load("recipes/reports.py")

    async def quick_query(user_id: int, month: int) -> int:
        await anyio.sleep(0)
        return user_id * month

    recipe.query_month = quick_query
    transport = httpx.ASGITransport(app=recipe.app)
    async with (
        recipe.app.router.lifespan_context(recipe.app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        created = await client.post("/reports", params={"user_id": 2, "year": 2025})
        assert created.status_code == 202
        status = await recipe.wait_for(client, created.json()["status_url"], limit=5)
    assert status["state"] == "succeeded"
    assert status["result"] == {"user_id": 2, "year": 2025, "total": 156}
    assert (status["progress"], status["message"]) == (1.0, "2025-12")


def test_notifications_handle_a_redelivered_event_once(
    backend: Backend, idempotency_store: object
) -> None:
    """Notifications: a webhook delivered twice notifies once per channel."""
    recipe = load("recipes/notifications.py")
    event = {"id": "evt_1", "user_id": 7, "text": "new comment"}
    with TestClient(recipe.app, backend=backend) as client:
        assert client.post("/webhooks/comments", json=event).status_code == 200
        assert client.post("/webhooks/comments", json=event).status_code == 200
    assert recipe.sent == [("push", 7), ("email", 7)]


def test_notifications_a_failing_channel_does_not_stop_the_others(
    backend: Backend, instant_retries: RetryRecorder, idempotency_store: object
) -> None:
    """Notifications: push gives up; the email, queued after it, still goes."""
    recipe = load("recipes/notifications.py")

    async def push_down(user_id: int, text: str) -> None:
        raise ConnectionError("push service unavailable")

    recipe.push_to_devices = push_down
    with TestClient(recipe.app, backend=backend) as client:
        client.post("/webhooks/comments", json={"id": "e", "user_id": 7, "text": "x"})
    states = {info.name: info.state for info in recipe.manager.list()}
    assert states == {"send_push": TaskState.FAILED, "send_email": TaskState.SUCCEEDED}
    assert recipe.sent == [("email", 7)]


def test_database_opens_a_fresh_session_per_attempt(
    backend: Backend, instant_retries: RetryRecorder
) -> None:
    """Database: a dropped connection is retried on a new session, and counted."""
    recipe = load("recipes/database.py")
    recipe.database.drop_next_connection = True
    with TestClient(recipe.app, backend=backend) as client:
        status_url = client.post("/items/3/views").json()["status_url"]
        status = client.get(status_url).json()
    assert (status["state"], status["attempt"]) == ("succeeded", 2)
    assert recipe.database.views == {3: 1}
    assert next(recipe.database.sessions) == 3  # two sessions were opened


def test_database_reusing_one_session_cannot_recover() -> None:
    """Database: a retry on the session of a dropped connection fails again."""
    recipe = load("recipes/database.py")
    recipe.database.drop_next_connection = True

    async def use(session: Any) -> str:
        try:
            await session.add_view(3)
        except (ConnectionError, RuntimeError) as error:
            return type(error).__name__
        return "ok"

    async def same_session_twice() -> list[str]:
        async with recipe.database.session() as session:
            return [await use(session), await use(session)]

    assert anyio.run(same_session_twice) == ["ConnectionError", "RuntimeError"]


FASTAPI = tuple(int(part) for part in fastapi.__version__.split(".")[:2])


@pytest.fixture
def pitfall() -> Iterator[tuple[Any, list[bool]]]:
    """The pitfall app, fresh, and whether its session was closed at each use."""
    module: Any = importlib.reload(
        importlib.import_module("docs_src.recipes.database_pitfall")
    )
    closed_when_used: list[bool] = []
    real = module.Session.add_view

    async def add_view(self: Any, item_id: int) -> None:
        closed_when_used.append(self.closed)
        await real(self, item_id)

    module.Session.add_view = add_view
    yield module, closed_when_used
    module.Session.add_view = real


def test_database_pitfall_request_session_in_add_task(
    backend: Backend, pitfall: tuple[Any, list[bool]]
) -> None:
    """Pitfall: whether add_task sees the request's session open depends on FastAPI.

    0.106 to 0.117 close `yield` dependencies before the response is sent, so
    before its background tasks; 0.118 and later (and before 0.106) close them
    after the response, background tasks included.
    """
    module, closed_when_used = pitfall
    with TestClient(module.app, backend=backend, raise_server_exceptions=False) as c:
        assert c.post("/items/1/views").status_code == 200
    closed_first = (0, 106) <= FASTAPI < (0, 118)
    assert closed_when_used == [closed_first]
    assert module.database.views == ({} if closed_first else {1: 1})


@pytest.mark.skipif(FASTAPI < (0, 121), reason="Depends(scope=) is FastAPI 0.121+")
def test_database_pitfall_function_scope_closes_before_the_task(
    backend: Backend, pitfall: tuple[Any, list[bool]]
) -> None:
    """Pitfall: with Depends(scope="function") the session is closed for the task."""
    module, closed_when_used = pitfall
    route = next(
        r for r in module.app.routes if getattr(r, "path", "").endswith("/views")
    )
    dependency = route.dependant.dependencies[0]
    assert dependency.call is module.get_session
    app = fastapi.FastAPI(lifespan=module.lifespan(module.manager))

    @app.post("/items/{item_id}/views")
    async def view_item(
        item_id: int,
        session: Annotated[Any, fastapi.Depends(module.get_session, scope="function")],
        background_tasks: fastapi.BackgroundTasks,
    ) -> dict[str, bool]:
        background_tasks.add_task(module.count_view, session, item_id)
        return {"queued": True}

    with TestClient(app, backend=backend, raise_server_exceptions=False) as client:
        assert client.post("/items/1/views").status_code == 200
    assert closed_when_used == [True]
    assert module.database.views == {}


def test_database_pitfall_spawned_task_outlives_the_session(
    backend: Backend, pitfall: tuple[Any, list[bool]]
) -> None:
    """Pitfall: a spawned task that runs after the request finds its session closed."""
    module, closed_when_used = pitfall
    release = threading.Event()
    real = module.count_view

    async def later(session: Any, item_id: int) -> None:
        await anyio.to_thread.run_sync(release.wait, 5)  # the request ends meanwhile
        await real(session, item_id)

    module.count_view = later
    with TestClient(module.app, backend=backend) as client:
        assert client.post("/items/1/views-later").status_code == 200
        release.set()
    info = module.manager.list()[0]
    assert closed_when_used == [True]
    assert info.state is TaskState.FAILED
    assert info.error is not None
    assert info.error.type == "RuntimeError"


def test_long_jobs_one_export_per_user_at_a_time(backend: Backend) -> None:
    """Long jobs: a second export of the same account is a 409 while one runs."""
    recipe = load("recipes/long_jobs.py")
    release = threading.Event()
    real = recipe.export_rows

    async def held(user_id: int, batch: int) -> int:
        if batch == 0:
            await anyio.to_thread.run_sync(release.wait, 5)
        return int(await real(user_id, batch))

    recipe.export_rows = held
    with TestClient(recipe.app, backend=backend) as client:
        first = client.post("/users/1/export")
        second = client.post("/users/1/export")
        other = client.post("/users/2/export")
        third = client.post("/users/3/export")
        queued = client.get(third.json()["status_url"]).json()
        release.set()
    assert (first.status_code, second.status_code, other.status_code) == (202, 409, 202)
    assert first.json() == {"status_url": "/tasks/export-1"}
    assert queued["state"] == "pending"  # max_concurrency=2: it waited its turn
    export = recipe.manager.get("export-1")
    assert export is not None
    assert export.result == {"rows": 10000, "file": "/exports/1.csv"}
    assert {info.state for info in recipe.manager.list()} == {TaskState.SUCCEEDED}


# --- The pages that include these files ------------------------------------------

PAGES = ROOT / "docs"
SNIPPET = re.compile(r'^--8<-- "(?P<path>[^"]+)"$')
FENCE = re.compile(r"^```(?P<info>\S.*)?$")


def included_files() -> set[str]:
    """Every docs_src file a page includes with ``--8<--``, relative to the root."""
    return {
        m.group("path")
        for page in PAGES.rglob("*.md")
        for line in page.read_text(encoding="utf-8").splitlines()
        if (m := SNIPPET.match(line)) and m.group("path").startswith("docs_src/")
    }


def test_every_docs_src_file_is_shown_and_tested() -> None:
    """Each docs_src file is included by a page and exercised by this module."""
    files = {
        str(path.relative_to(ROOT))
        for path in DOCS_SRC.rglob("*")
        if path.suffix in {".py", ".json"} and path.name != "__init__.py"
    }
    this_module = Path(__file__).read_text(encoding="utf-8")
    untested = {
        path
        for path in files
        if path.removeprefix("docs_src/") not in this_module
        and path.removesuffix(".py").replace("/", ".") not in this_module
    }
    assert included_files() - files == set(), "a page includes a missing file"
    assert files - included_files() == set(), "a docs_src file no page shows"
    assert untested == set()


@pytest.mark.parametrize("folder", ["tutorial", "recipes", "coming-from"])
def test_every_python_block_of_these_pages_runs(folder: str) -> None:
    """A block is plain ```python (test_docs_examples runs it) or an included file.

    test_docs_examples runs only blocks whose fence is exactly ```python; a
    fence with a title or highlighted lines would be silently skipped, so
    those must include a docs_src file, which the tests above run.
    """
    for page in sorted((PAGES / folder).glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, start=1):
            info = (m.group("info") or "") if (m := FENCE.match(line)) else ""
            if info.startswith("{.python") or info.startswith("python "):
                assert info.startswith("{.python"), f"{page}:{number} is never run"
                assert SNIPPET.match(lines[number]), f"{page}:{number} is never run"
                assert lines[number + 1] == "```", f"{page}:{number} mixes code in"


# Step 11 is a test module of its own: its tests run here, with the plugin's
# fixtures and its own (as_admin, autouse: it only overrides step 10's app).
_step11: Any = importlib.import_module("docs_src.tutorial.test_step11")
globals().update(
    {
        name: getattr(_step11, name)
        for name in dir(_step11)
        if name.startswith("test_") or name == "as_admin"
    }
)


def test_opentelemetry_console_prints_the_span_and_the_metrics() -> None:
    """opentelemetry/console.py prints its task's span and bgtasks' metrics."""
    import subprocess

    pytest.importorskip("opentelemetry.sdk")
    out = subprocess.run(
        [sys.executable, str(DOCS_SRC / "opentelemetry" / "console.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "succeeded receipt 42 sent" in out
    assert '"name": "send_receipt"' in out
    assert '"name": "bgtasks.retry"' in out
    for metric in ("bgtasks.task.duration", "bgtasks.task.finished"):
        assert f'"name": "{metric}"' in out
    assert "the mail server is busy" not in out  # messages stay out of telemetry
