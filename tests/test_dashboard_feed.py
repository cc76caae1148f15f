"""The dashboard's live feed: coalescing, bounds, SSE framing, cleanup, shutdown."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

import anyio
import pytest
from starlette.types import ASGIApp, Message

from bgtasks import TaskInfo, TaskManager, TaskState, current_task
from bgtasks._web.dashboard import feed as feed_module
from bgtasks._web.dashboard.feed import ChangeFeed
from bgtasks._web.dashboard.source import TaskSource
from bgtasks.starlette import dashboard_router

pytestmark = pytest.mark.anyio
EPOCH = datetime(2026, 1, 1, tzinfo=timezone.utc)


@pytest.fixture(autouse=True)
def fast_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shorten the feed's windows so no test waits long."""
    monkeypatch.setattr(feed_module, "TICK", 0.01)
    monkeypatch.setattr(feed_module, "POLL", 0.01)
    monkeypatch.setattr(feed_module, "STATS_EVERY", 0.0)


def snapshot(
    number: int, state: TaskState = TaskState.RUNNING, **changes: Any
) -> TaskInfo:
    """A task's snapshot, submitted ``number`` seconds after EPOCH."""
    info = TaskInfo(
        id=f"t{number}",
        name="job",
        state=state,
        created_at=EPOCH + timedelta(seconds=number),
        started_at=None,
        finished_at=None,
        result=None,
        error=None,
        progress=None,
        message=None,
        attempt=1,
        cancel_requested=False,
    )
    return replace(info, **changes)


class FakeSource:
    """The part of TaskSource the feed uses; the test plays the manager."""

    shared = False

    def __init__(self) -> None:
        self.running = True
        self.callbacks: list[Callable[[TaskInfo], object]] = []
        self.unsubscribed = 0
        self.running_tasks: list[TaskInfo] = []

    def subscribe(self, callback: Callable[[TaskInfo], object]) -> Callable[[], None]:
        self.callbacks.append(callback)

        def undo() -> None:
            self.callbacks.remove(callback)
            self.unsubscribed += 1

        return undo

    def active(self) -> list[TaskInfo]:
        return list(self.running_tasks)

    def change(self, info: TaskInfo) -> None:
        for callback in self.callbacks:
            callback(info)


def make_feed(source: FakeSource) -> ChangeFeed:
    """A feed over the fake source, rendering a task as its id, state and message."""
    return ChangeFeed(
        cast("TaskSource", source),
        lambda i: {"id": i.id, "state": i.state.value, "message": i.message},
        stats,
    )


async def stats() -> dict[str, Any]:
    """What the fake dashboard's statistics render as."""
    return {"total": 0}


def events(chunk: bytes) -> list[tuple[str, Any]]:
    """Parse SSE text into (event, data) pairs; comments and retry lines skipped."""
    found: list[tuple[str, Any]] = []
    for block in chunk.decode().split("\n\n"):
        name, data = "message", None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = json.loads(line[len("data: ") :])
        if data is not None:
            found.append((name, data))
    return found


def later(feed: ChangeFeed) -> float:
    """A moment after the current window closes."""
    return anyio.current_time() + feed.tick * 2


async def test_changes_of_one_task_are_coalesced() -> None:
    """Three changes of one task in a window are sent once, as the latest."""
    source = FakeSource()
    feed = make_feed(source)
    feed._attach()
    source.change(snapshot(1, message="a"))
    source.change(snapshot(1, message="b"))
    source.change(snapshot(2, message="x"))
    source.change(snapshot(1, TaskState.SUCCEEDED, message="c"))
    await feed._cut(later(feed))
    chunk, seq = feed._since(0)
    assert seq == 1
    (name, data), (stats, _) = events(chunk)
    assert (name, stats) == ("tasks", "stats")
    assert data == {
        "tasks": [
            {"id": "t1", "state": "succeeded", "message": "c"},
            {"id": "t2", "state": "running", "message": "x"},
        ],
        "resync": False,
    }
    assert feed._since(seq) == (b"", seq)


async def test_nothing_changed_sends_nothing() -> None:
    """A quiet window makes no batch at all, and an open window is not cut."""
    source = FakeSource()
    feed = make_feed(source)
    feed._attach()
    await feed._cut(later(feed))
    assert feed._since(0) == (b"", 0)
    source.change(snapshot(1))
    await feed._cut(anyio.current_time())  # the window is still open
    assert feed._since(0) == (b"", 0)


async def test_no_stream_is_served_for_a_stopped_manager() -> None:
    """Serving while the manager is stopped sends nothing and subscribes to nothing."""
    source = FakeSource()
    source.running = False
    feed = make_feed(source)
    sent: list[bytes] = []

    async def send(chunk: bytes) -> None:
        sent.append(chunk)  # pragma: no cover - must not be called

    await feed.serve(send)
    assert (sent, feed.streams, source.callbacks) == ([], 0, [])


async def test_a_stream_too_far_behind_is_told_to_resync() -> None:
    """Only RING batches are kept: an older reader gets a resync, not a queue."""
    source = FakeSource()
    feed = make_feed(source)
    feed._attach()
    now = anyio.current_time()
    for number in range(feed.ring + 3):
        source.change(snapshot(number))
        now += feed.tick * 2
        await feed._cut(now)
    assert len(feed._batches) == feed.ring
    chunk, seq = feed._since(0)
    assert events(chunk) == [("resync", {})]
    assert seq == feed.ring + 3
    recent, _ = feed._since(seq - 1)
    assert [name for name, _ in events(recent)] == ["tasks", "stats"]


async def test_a_huge_batch_keeps_the_newest_and_asks_for_a_reload() -> None:
    """Beyond MAX_BATCH tasks, the newest are sent and pages reload the rest."""
    source = FakeSource()
    feed = make_feed(source)
    feed.max_batch = 3
    feed._attach()
    for number in range(10):
        source.change(snapshot(number))
    await feed._cut(later(feed))
    (_, data), _ = events(feed._since(0)[0])
    assert data["resync"] is True
    assert [task["id"] for task in data["tasks"]] == ["t9", "t8", "t7"]


async def test_progress_of_running_tasks_is_polled() -> None:
    """Progress is no event: changed running tasks join the batch, unchanged don't."""
    source = FakeSource()
    feed = make_feed(source)
    feed._attach()
    source.running_tasks = [snapshot(1, progress=0.1), snapshot(2, progress=0.5)]
    now = later(feed)
    await feed._cut(now)
    chunk, seq = feed._since(0)
    assert [t["id"] for t in events(chunk)[0][1]["tasks"]] == ["t1", "t2"]
    source.running_tasks = [
        snapshot(1, progress=0.2, message="m"),
        snapshot(2, progress=0.5),
    ]
    await feed._cut(now + 1)
    chunk, seq = feed._since(seq)
    assert events(chunk)[0][1]["tasks"] == [
        {"id": "t1", "state": "running", "message": "m"}
    ]
    # A finishing event beats an older poll of the same task.
    source.change(snapshot(1, TaskState.SUCCEEDED))
    source.running_tasks = [snapshot(1, progress=0.9)]
    await feed._cut(now + 2)
    chunk, _ = feed._since(seq)
    assert events(chunk)[0][1]["tasks"][0]["state"] == "succeeded"


async def test_the_last_stream_unsubscribes_and_forgets() -> None:
    """With no stream left, the feed holds no subscription and no data."""
    source = FakeSource()
    feed = make_feed(source)
    feed._attach()
    feed._attach()
    source.change(snapshot(1))
    feed._detach()
    assert (feed.streams, len(source.callbacks)) == (1, 1)
    feed._detach()
    assert (feed.streams, source.callbacks, source.unsubscribed) == (0, [], 1)
    assert feed._pending == {}
    assert len(feed._batches) == 0


# -- the stream over ASGI, against a real manager ---------------------------


class Request:
    """One ASGI GET driven by hand: read the body as it comes, then hang up."""

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.app = app
        self.path = path
        self.status = 0
        self.headers: dict[str, str] = {}
        self.hang_up = anyio.Event()
        self.done = anyio.Event()
        self.ended = False  # the app sent more_body=False
        self._buffer = b""
        self._arrived = anyio.Event()
        self.stall_after: int | None = None  # body chunks taken before stalling

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"testserver")],
            "server": ("testserver", 80),
            "client": ("127.0.0.1", 1234),
        }

        async def receive() -> Message:
            await self.hang_up.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if self.stall_after is not None and message.get("more_body"):
                if self.stall_after == 0:
                    await anyio.sleep_forever()
                self.stall_after -= 1
            if message["type"] == "http.response.start":
                self.status = message["status"]
                self.headers = {k.decode(): v.decode() for k, v in message["headers"]}
            elif message.get("more_body", False):
                self._buffer += message["body"]
                self._arrived.set()
            else:
                self.ended = True

        try:
            await self.app(scope, receive, send)
        finally:
            self.done.set()
            self._arrived.set()

    async def next_events(self) -> list[tuple[str, Any]]:
        """Wait for the next complete event(s)."""
        while b"\n\n" not in self._buffer:
            assert not self.done.is_set(), "the stream ended"
            self._arrived = anyio.Event()
            await self._arrived.wait()
        complete, _, self._buffer = self._buffer.rpartition(b"\n\n")
        return events(complete + b"\n\n")


@pytest.fixture
def manager() -> TaskManager:
    """A manager that drains for a moment only."""
    return TaskManager(drain_timeout=0.05)


async def reporter(release: anyio.Event) -> str:
    """Report progress once, then wait to be released."""
    current_task().set_progress(0.5, "<img src=x onerror=alert(1)>")
    await release.wait()
    return "ok"


async def test_stream_says_hello_then_sends_changes(manager: TaskManager) -> None:
    """SSE framing: retry, hello, then JSON task events, with streaming headers."""
    router = dashboard_router(manager)
    async with manager, anyio.create_task_group() as tg:
        request = Request(router, "/api/events")
        tg.start_soon(request.run)
        (name, hello), *_ = await request.next_events()
        assert (name, hello) == ("hello", {"tick": 0.01})
        assert request.status == 200
        assert request.headers["content-type"].startswith("text/event-stream")
        assert request.headers["cache-control"] == "no-store"
        assert request.headers["x-accel-buffering"] == "no"
        assert "content-length" not in request.headers
        release = anyio.Event()
        handle = manager.spawn(reporter, release)
        seen: dict[str, Any] = {}
        with anyio.fail_after(5):
            while seen.get("message") is None:
                for name, data in await request.next_events():
                    if name == "tasks":
                        seen.update(
                            next(t for t in data["tasks"] if t["id"] == handle.id)
                        )
        assert seen["message"] == "<img src=x onerror=alert(1)>"
        assert seen["state"] == "running"
        assert "result" not in seen
        release.set()
        request.hang_up.set()
    assert request.done.is_set()


async def test_disconnect_leaves_nothing_behind(manager: TaskManager) -> None:
    """A client that hangs up ends its stream and the feed's subscription."""
    router = dashboard_router(manager)
    async with manager:
        request = Request(router, "/api/events")
        async with anyio.create_task_group() as tg:
            tg.start_soon(request.run)
            await request.next_events()
            request.hang_up.set()
        feed = _feed_of(router)
        assert feed.streams == 0
        assert not manager._engine.subscribers.any
        manager.spawn(anyio.sleep, 0)
        assert feed._pending == {}
        assert not request.ended  # nothing is sent to a client that left


async def test_stream_ends_at_shutdown(manager: TaskManager) -> None:
    """Closing the manager (the app's shutdown) ends every open stream cleanly."""
    router = dashboard_router(manager)
    async with anyio.create_task_group() as tg:
        async with manager:
            request = Request(router, "/api/events")
            tg.start_soon(request.run)
            await request.next_events()
        with anyio.fail_after(2):
            await request.done.wait()
    assert request.ended
    assert _feed_of(router).streams == 0


async def test_an_idle_stream_sends_keep_alive_comments(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With nothing to say for HEARTBEAT, the stream sends an SSE comment."""
    monkeypatch.setattr(feed_module, "HEARTBEAT", 0.0)
    router = dashboard_router(manager)
    async with manager, anyio.create_task_group() as tg:
        request = Request(router, "/api/events")
        tg.start_soon(request.run)
        await request.next_events()
        with anyio.fail_after(2):
            while b": keep-alive\n\n" not in request._buffer:
                request._arrived = anyio.Event()
                await request._arrived.wait()
        request.hang_up.set()


async def test_stream_ends_after_its_lifetime(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream ends after LIFETIME, so no server waits on it at shutdown."""
    monkeypatch.setattr(feed_module, "LIFETIME", 0.05)
    router = dashboard_router(manager)
    async with manager:
        request = Request(router, "/api/events")
        with anyio.fail_after(2):
            await request.run()
    assert request.ended


async def test_a_stuck_client_is_dropped(
    manager: TaskManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that accepts nothing for SEND_TIMEOUT is dropped, not waited for."""
    monkeypatch.setattr(feed_module, "SEND_TIMEOUT", 0.05)
    router = dashboard_router(manager)
    async with manager:
        request = Request(router, "/api/events")
        request.stall_after = 1  # takes the hello, then never reads again
        manager.spawn(anyio.sleep, 0)
        with anyio.fail_after(2):
            await request.run()
        assert _feed_of(router).streams == 0
        assert not request.ended


async def test_no_stream_while_the_manager_is_stopped(manager: TaskManager) -> None:
    """503 before the manager runs: the page falls back to polling."""
    router = dashboard_router(manager)
    request = Request(router, "/api/events")
    await request.run()
    assert request.status == 503
    assert request.headers["cache-control"] == "no-store"


def _feed_of(router: Any) -> ChangeFeed:
    """The feed behind a dashboard router (found through its events route)."""
    for route in router.routes:
        if route.path == "/api/events":
            return cast("ChangeFeed", route.endpoint.__self__.feed)
    raise AssertionError("no events route")  # pragma: no cover
