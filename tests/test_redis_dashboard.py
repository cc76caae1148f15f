"""The dashboard over RedisBackend: two workers, real Redis, both anyio backends."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

import bgtasks._redis.tasks as tasks_module
from bgtasks import TaskManager, current_task
from bgtasks._web.dashboard import feed as feed_module
from bgtasks._web.dashboard import source as source_module
from bgtasks.starlette import dashboard_router
from redis_server import RedisServer
from test_dashboard_feed import Request
from test_redis_backend import _until, _workers

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short windows: the feed's, the stats cache, and the workers' watch check."""
    monkeypatch.setattr(feed_module, "TICK", 0.02)
    monkeypatch.setattr(feed_module, "POLL", 0.02)
    monkeypatch.setattr(feed_module, "STATS_EVERY", 0.0)
    monkeypatch.setattr(feed_module, "REMOTE_RETRY", 0.05)
    monkeypatch.setattr(source_module, "STATS_TTL", 0.0)
    monkeypatch.setattr(tasks_module, "_WATCH_CHECK", 0.02)
    monkeypatch.setattr(tasks_module, "_PUBLISH_EVERY", 0.02)


def _site(manager: TaskManager) -> Starlette:
    return Starlette(routes=[Mount("/dashboard", dashboard_router(manager))])


async def _stats(http: httpx.AsyncClient) -> dict[str, Any]:
    answer = await http.get("/dashboard/api/stats")
    assert answer.status_code == 200
    body: dict[str, Any] = answer.json()
    return body


async def test_stats_count_the_tasks_of_every_worker(
    redis_url: str, redis_prefix: str
) -> None:
    """A's page counts B's tasks too: per state, success rate, p50 and p95."""
    release = anyio.Event()

    async def ok() -> None:
        await anyio.sleep(0)

    async def broken() -> None:
        raise ValueError("no")

    async def held() -> None:
        await release.wait()

    async with _workers(redis_url, redis_prefix) as (a, b):
        for handle in (a.spawn(ok), b.spawn(ok), b.spawn(ok), b.spawn(broken)):
            await handle.wait()
        running = b.spawn(held)
        await _until(lambda: a.aget(running.id), lambda i: i.state.value == "running")
        transport = httpx.ASGITransport(app=_site(a))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            expected = {
                "pending": 0,
                "running": 1,
                "succeeded": 3,
                "failed": 1,
                "cancelled": 0,
                "interrupted": 0,
            }
            # A finished task is indexed one round trip after its write lands.
            with anyio.fail_after(5):
                while (stats := await _stats(http))["counts"] != expected:
                    await anyio.sleep(0.02)
            assert (stats["scope"], stats["degraded"]) == ("all", False)
            assert (stats["total"], stats["success_rate"]) == (5, 0.75)
            assert stats["duration_p50"] is not None
            assert stats["duration_p95"] >= stats["duration_p50"]
            assert len(a.list()) == 1  # A's own records: the one task it ran
        release.set()


async def test_a_s_feed_shows_b_s_task_appear_progress_and_end(
    redis_url: str, redis_prefix: str
) -> None:
    """A task of worker B appears on A's live stream, moves, and ends there."""
    step, release = anyio.Event(), anyio.Event()

    async def job() -> str:
        current_task().set_progress(0.25, "first")
        await step.wait()
        current_task().set_progress(0.75, "second")
        await release.wait()
        return "ok"

    async with _workers(redis_url, redis_prefix) as (a, b):
        async with anyio.create_task_group() as tg:
            request = Request(dashboard_router(a), "/api/events")
            tg.start_soon(request.run)
            (name, _), *_ = await request.next_events()
            assert name == "hello"
            await anyio.sleep(0.1)  # A's feed marks itself watching
            handle = b.spawn(job)
            seen: list[tuple[str, float | None]] = []

            async def until(state: str, progress: float | None) -> None:
                with anyio.fail_after(5):
                    while (state, progress) not in seen:
                        for event, data in await request.next_events():
                            if event == "tasks":
                                seen.extend(
                                    (t["state"], t["progress"])
                                    for t in data["tasks"]
                                    if t["id"] == handle.id
                                )

            await until("running", 0.25)
            assert a.get(handle.id) is None  # B's task: A's own view has none
            step.set()
            await until("running", 0.75)
            release.set()
            await until("succeeded", 0.75)
            request.hang_up.set()
        with anyio.fail_after(5):
            await request.done.wait()


async def test_stats_fall_back_to_this_worker_while_redis_is_down(
    private_redis: RedisServer,
) -> None:
    """Redis down: the stats are this worker's own (degraded); the feed flows on."""
    async with _workers(private_redis.url, "t") as (a, b):
        await b.spawn(anyio.sleep, 0).wait()
        await a.spawn(anyio.sleep, 0).wait()
        transport = httpx.ASGITransport(app=_site(a))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            with anyio.fail_after(5):
                while (await _stats(http))["counts"]["succeeded"] != 2:
                    await anyio.sleep(0.02)
            async with anyio.create_task_group() as tg:
                request = Request(dashboard_router(a), "/api/events")
                tg.start_soon(request.run)
                await request.next_events()  # hello
                private_redis.stop()
                stats = await _stats(http)
                assert (stats["scope"], stats["degraded"]) == ("worker", True)
                assert stats["counts"]["succeeded"] == 1  # A's own task only
                handle = a.spawn(anyio.sleep, 0)
                await handle.wait()
                with anyio.fail_after(5):
                    found = False
                    while not found:
                        for event, data in await request.next_events():
                            found |= event == "tasks" and any(
                                t["id"] == handle.id and t["state"] == "succeeded"
                                for t in data["tasks"]
                            )
                request.hang_up.set()
