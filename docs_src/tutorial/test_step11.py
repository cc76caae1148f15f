import pytest
from fastapi.testclient import TestClient

from bgtasks import TaskState
from bgtasks.testing import RetryRecorder

from . import step10_dashboard as main


@pytest.fixture(autouse=True)
def as_admin():
    # The tests act as admins: FastAPI's dependency_overrides skips the token check.
    main.app.dependency_overrides[main.require_admin] = lambda: None
    yield
    main.app.dependency_overrides.clear()


class FakeMailServer:
    def __init__(self, busy_times: int = 0):
        self.busy_times = busy_times
        self.connections = 0

    def __call__(self, timeout: float | None):
        self.connections += 1
        if self.connections <= self.busy_times:
            raise ConnectionError("421 mail server busy, try again later")


def test_notification_survives_a_busy_server(
    instant_retries: RetryRecorder, idempotency_store, monkeypatch: pytest.MonkeyPatch
):
    """Two refusals are retried without waiting, and the task succeeds."""
    monkeypatch.setattr(main, "connect_to_mail_server", FakeMailServer(busy_times=2))
    with TestClient(main.app) as client:
        response = client.post("/send-notification/foo@example.com")
        status = client.get(response.json()["status_url"]).json()
    assert status["state"] == "succeeded"
    assert status["attempt"] == 3
    assert instant_retries.attempts == [1, 2]
    assert instant_retries.delays == [0.5, 1.0]


def test_a_repeated_notification_is_sent_once(
    idempotency_store, monkeypatch: pytest.MonkeyPatch
):
    """A client that retries its request does not notify twice."""
    server = FakeMailServer()
    monkeypatch.setattr(main, "connect_to_mail_server", server)
    with TestClient(main.app) as client:
        client.post("/send-notification/foo@example.com")
        client.post("/send-notification/foo@example.com")
    assert server.connections == 1


def test_a_broadcast_reaches_every_subscriber(
    idempotency_store, monkeypatch: pytest.MonkeyPatch
):
    """Leaving the TestClient shuts the app down, which waits for the broadcast."""
    server = FakeMailServer()
    monkeypatch.setattr(main, "connect_to_mail_server", server)
    with TestClient(main.app) as client:
        task_id = client.post("/notify-subscribers?message=hi").json()["task_id"]
    info = main.manager.get(task_id)
    assert info.state is TaskState.SUCCEEDED
    assert info.result == {"sent": 20}
    assert server.connections == 20
