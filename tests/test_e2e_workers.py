"""End to end: two uvicorn processes of the example app sharing one real Redis."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from redis_server import RedisServer

pytest.importorskip("uvicorn", reason="the workers run under uvicorn")
pytest.importorskip("multipart", reason="the example's upload needs python-multipart")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LEASE = 0.5


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _poll(check: Callable[[], Any], deadline: float = 10.0) -> Any:
    """Call ``check`` every 0.02 s until it returns something truthy."""
    ends = time.monotonic() + deadline
    while True:
        try:
            found = check()
        except httpx.TransportError:
            found = None
        if found:
            return found
        if time.monotonic() > ends:
            raise TimeoutError("the condition did not hold in time")
        time.sleep(0.02)


class Worker:
    """One uvicorn process of examples/app.py on a loopback port."""

    def __init__(self, redis_url: str) -> None:
        self.port = _free_port()
        env = {
            **os.environ,
            "BGTASKS_REDIS_URL": redis_url,
            "BGTASKS_LEASE": str(LEASE),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--app-dir",
                str(EXAMPLES),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
                "app:app",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=5)
        _poll(lambda: self.http.get("/tasks").status_code == 200, deadline=20)

    def task(self, task_id: str) -> dict[str, Any] | None:
        answer = self.http.get(f"/tasks/{task_id}")
        return answer.json() if answer.status_code == 200 else None

    def end(self) -> None:
        self.http.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def workers(private_redis: RedisServer) -> Iterator[tuple[Worker, Worker]]:
    """Two workers of the example app on one Redis of this test's own."""
    a = Worker(private_redis.url)
    try:
        b = Worker(private_redis.url)
    except BaseException:
        a.end()
        raise
    try:
        yield a, b
    finally:
        a.end()
        b.end()


def _report(worker: Worker) -> str:
    answer = worker.http.post("/reports", params={"user_id": 1, "pages": 1000})
    assert answer.status_code == 202
    return str(answer.json()["task_id"])


def test_submit_on_one_worker_poll_and_cancel_through_the_other(
    workers: tuple[Worker, Worker],
) -> None:
    """A's report is seen running through B, B cancels it, both report cancelled."""
    a, b = workers
    task_id = _report(a)
    running = _poll(lambda: (t := b.task(task_id)) and t["state"] == "running" and t)
    assert running["name"] == "generate_report"
    listed = b.http.get("/tasks").json()["tasks"]
    assert task_id in [t["id"] for t in listed]
    assert b.http.delete(f"/tasks/{task_id}").status_code == 202
    final = _poll(lambda: (t := a.task(task_id)) and t["state"] != "running" and t)
    assert final["state"] == "cancelled"
    assert _poll(lambda: (t := b.task(task_id)) and t["state"] == "cancelled")


def test_a_killed_worker_s_task_is_reported_interrupted(
    workers: tuple[Worker, Worker],
) -> None:
    """kill -9 of A mid-task: B reports A's task interrupted within a few leases."""
    a, b = workers
    task_id = _report(a)
    _poll(lambda: (t := b.task(task_id)) and t["state"] == "running")
    a.process.kill()
    killed = time.monotonic()
    final = _poll(lambda: (t := b.task(task_id)) and t["state"] != "running" and t)
    assert (final["state"], final["cancel_reason"]) == ("interrupted", "worker lost")
    assert time.monotonic() - killed < 4 * LEASE + 2  # one lease, reap and grace


def test_a_paused_worker_s_late_writes_are_rejected(
    workers: tuple[Worker, Worker],
) -> None:
    """SIGSTOP A past its lease, then SIGCONT: its task stays interrupted."""
    a, b = workers
    task_id = _report(a)
    _poll(lambda: (t := b.task(task_id)) and t["state"] == "running")
    a.process.send_signal(signal.SIGSTOP)
    _poll(lambda: (t := b.task(task_id)) and t["state"] == "interrupted")
    a.process.send_signal(signal.SIGCONT)
    # A resumes and writes progress and, on cancel, its end: all rejected.
    _poll(lambda: a.http.get("/tasks").status_code == 200)
    a.http.delete(f"/tasks/{task_id}")
    time.sleep(0.1)
    for _ in range(5):
        got = b.task(task_id)
        assert got is not None
        assert got["state"] == "interrupted"
        time.sleep(0.05)


def test_redis_down_gives_503_then_everything_resumes(
    workers: tuple[Worker, Worker], private_redis: RedisServer
) -> None:
    """Redis stopped: B answers 503 for A's tasks; restarted: all works again."""
    a, b = workers
    first = _report(a)
    _poll(lambda: b.task(first))
    private_redis.stop()
    assert _poll(lambda: b.http.get(f"/tasks/{first}").status_code == 503)
    assert b.http.get("/tasks").status_code == 503
    private_redis.restart()
    later = _report(a)
    assert _poll(lambda: (t := b.task(later)) and t["state"] == "running")
