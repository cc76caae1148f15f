"""TaskManager(backend=RedisBackend): two workers on one real Redis, both backends."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import coredis
import httpx
import pytest

from bgtasks import TaskInfo, TaskManager, TaskState, current_task
from bgtasks._redis.backend import RedisBackend
from bgtasks._redis.tasks import BackendUnavailableError
from redis_server import RedisServer
from redis_workers import stop_mirroring

pytestmark = pytest.mark.anyio

# Short, so a lost worker is noticed within the test's budget.
LEASE = 0.3
TIMEOUT = 0.1


def _backend(url: str, prefix: str, **options: Any) -> RedisBackend:
    options.setdefault("lease", LEASE)
    options.setdefault("timeout", TIMEOUT)
    return RedisBackend.from_url(url, prefix=prefix, **options)


async def _until(
    read: Callable[[], Awaitable[TaskInfo | None]],
    check: Callable[[TaskInfo], bool],
    deadline: float = 5.0,
) -> TaskInfo:
    """Poll ``read`` every 0.02 s until ``check`` holds (bounded by ``deadline``)."""
    with anyio.fail_after(deadline):
        while True:
            with contextlib.suppress(BackendUnavailableError):
                info = await read()
                if info is not None and check(info):
                    return info
            await anyio.sleep(0.02)


def _finished(info: TaskInfo) -> bool:
    return info.state.is_finished


@contextlib.asynccontextmanager
async def _workers(
    url: str, prefix: str, **options: Any
) -> AsyncIterator[tuple[TaskManager, TaskManager]]:
    a = TaskManager(backend=_backend(url, prefix, **options), drain_timeout=0)
    b = TaskManager(backend=_backend(url, prefix, **options), drain_timeout=0)
    async with a, b:
        yield a, b


async def test_submit_on_a_read_list_and_cancel_through_b(
    redis_url: str, redis_prefix: str
) -> None:
    """B sees A's task (get, list, progress), cancels it, and waits for its end."""
    started = anyio.Event()

    async def job() -> None:
        current_task().set_progress(0.5, "halfway")
        started.set()
        await anyio.sleep_forever()

    async with _workers(redis_url, redis_prefix) as (a, b):
        handle = a.spawn(job)
        await started.wait()
        assert b.get(handle.id) is None  # the sync read is this worker's only
        info = await _until(lambda: b.aget(handle.id), lambda i: i.progress == 0.5)
        assert (info.state, info.name, info.message) == (
            TaskState.RUNNING,
            "test_submit_on_a_read_list_and_cancel_through_b.<locals>.job",
            "halfway",
        )
        page = await b.alist()
        assert [i.id for i in page] == [handle.id]
        assert [i.id for i in await b.alist(state="running")] == [handle.id]
        assert await b.alist(state="succeeded") == []
        assert await b.cancel(handle.id)
        with anyio.fail_after(5):
            final = await b.wait(handle.id, timeout=5)
        assert (final.state, final.cancel_requested) == (TaskState.CANCELLED, True)
        assert (await handle.wait()).state == TaskState.CANCELLED
        assert not await b.cancel(handle.id)  # finished: False, as locally
        assert not await b.cancel("no-such-task")
        assert await b.aget("no-such-task") is None


async def test_results_errors_and_attempts_reach_the_other_worker(
    redis_url: str, redis_prefix: str
) -> None:
    """A JSON result, an error's type and message, and a non-JSON result omitted."""

    async def ok() -> dict[str, int]:
        return {"sent": 3}

    async def broken() -> None:
        raise ValueError("card declined")

    async def opaque() -> object:
        return object()

    async with _workers(redis_url, redis_prefix) as (a, b):
        handles = [a.spawn(ok), a.spawn(broken), a.spawn(opaque)]
        for handle in handles:
            await handle.wait()
        got = [
            await _until(functools.partial(b.aget, h.id), _finished) for h in handles
        ]
    assert [i.state for i in got] == [
        TaskState.SUCCEEDED,
        TaskState.FAILED,
        TaskState.SUCCEEDED,
    ]
    assert got[0].result == {"sent": 3}
    assert got[1].error is not None
    assert (got[1].error.type, got[1].error.message) == ("ValueError", "card declined")
    assert got[2].result is None  # not JSON: never written, read back as None


async def test_pages_of_every_worker_with_a_cursor_valid_on_both(
    redis_url: str, redis_prefix: str
) -> None:
    """alist pages cover both workers' tasks, newest first, with no repeat or gap."""

    async def job() -> int:
        return 1

    async with _workers(redis_url, redis_prefix) as (a, b):
        ids = []
        for i in range(7):
            handle = (a if i % 2 else b).spawn(job)
            await handle.wait()
            ids.append(handle.id)
        seen: list[TaskInfo] = []
        page = await a.alist(limit=3)
        reader = [b, a]
        while True:
            seen += page
            if page.next_cursor is None:
                break
            page = await reader[0].alist(limit=3, after=page.next_cursor)
            reader.reverse()
        # Newest first by creation (ms; a tie is ordered by id), each once.
        assert sorted(i.id for i in seen) == sorted(ids)
        created = [i.created_at.timestamp() // 0.001 for i in seen]
        assert created == sorted(created, reverse=True)
        assert [i.id for i in await a.alist()] == [i.id for i in seen]
        with pytest.raises(ValueError, match="next_cursor of an earlier alist"):
            await a.alist(after="nope")
        # A cursor of the in-memory list is no cursor of the backend's.
        with pytest.raises(ValueError, match="next_cursor"):
            await a.alist(after=a.list(limit=1).next_cursor)


async def test_a_lost_worker_s_tasks_are_reported_interrupted(
    redis_url: str, redis_prefix: str, records: list[logging.LogRecord]
) -> None:
    """A's loop stops without unregistering: B reports A's task interrupted, once.

    A's later write (its task cancelled at shutdown) is fenced off: the
    record stays interrupted.
    """
    started = anyio.Event()

    async def job() -> None:
        started.set()
        await anyio.sleep_forever()

    async with _workers(redis_url, redis_prefix) as (a, b):
        handle = a.spawn(job)
        await started.wait()
        await _until(lambda: b.aget(handle.id), lambda i: i.state is TaskState.RUNNING)
        stop_mirroring(a)
        info = await _until(
            lambda: b.aget(handle.id), lambda i: i.state.is_finished, deadline=10
        )
        assert (info.state, info.cancel_reason) == (
            TaskState.INTERRUPTED,
            "worker lost",
        )
        assert info.finished_at is not None
        assert info.to_dict()["state"] == "interrupted"
        # The state is visible once the tasks are marked, a moment before the
        # reaper's WARNING (it first clears the dead worker's keys): wait for it
        # while B still runs, or closing B cancels the reap before it logs.
        with anyio.fail_after(5):
            while not any(
                r.levelno == logging.WARNING and "interrupted" in r.getMessage()
                for r in records
            ):
                await anyio.sleep(0.02)
    # A cancelled its task at shutdown and pushed "cancelled": rejected.
    async with _workers(redis_url, redis_prefix) as (_, c):
        after = await c.aget(handle.id)
    assert after is not None
    assert after.state == TaskState.INTERRUPTED


async def test_shutdown_records_true_states_never_interrupted(
    redis_url: str, redis_prefix: str
) -> None:
    """Drained tasks end as they ended; what the drain cancels is ``cancelled``."""
    release = anyio.Event()

    async def quick() -> str:
        await release.wait()
        return "done"

    async def stuck() -> None:
        await anyio.sleep_forever()

    a = TaskManager(backend=_backend(redis_url, redis_prefix), drain_timeout=5)
    async with a:
        done = a.spawn(quick)
        hung = a.spawn(stuck)
        release.set()
        await done.wait()
        await a.aclose(timeout=0)
    async with TaskManager(backend=_backend(redis_url, redis_prefix)) as b:
        finished = await b.aget(done.id)
        cancelled = await b.aget(hung.id)
        workers = await b.alist()
    assert finished is not None
    assert (finished.state, finished.result) == (TaskState.SUCCEEDED, "done")
    assert cancelled is not None
    assert (cancelled.state, cancelled.cancel_requested) == (TaskState.CANCELLED, True)
    assert {i.id for i in workers} == {done.id, hung.id}


async def test_reads_raise_backend_unavailable_when_redis_is_down(
    private_redis: RedisServer,
) -> None:
    """Redis down: tasks still run, reads of others raise, all resumes after."""
    async with _workers(private_redis.url, "t") as (a, b):
        first = a.spawn(anyio.sleep, 0)
        await first.wait()
        await _until(lambda: b.aget(first.id), lambda i: i.state.is_finished)
        private_redis.stop()
        during = a.spawn(anyio.sleep, 0)
        assert (await during.wait()).state == TaskState.SUCCEEDED
        assert (await a.aget(during.id)) is not None  # local: still answered
        with pytest.raises(BackendUnavailableError):
            await b.aget(during.id)
        with pytest.raises(BackendUnavailableError):
            await b.alist()
        private_redis.restart()
        info = await _until(
            lambda: b.aget(during.id), lambda i: i.state.is_finished, deadline=10
        )
        assert info.state == TaskState.SUCCEEDED


def test_backend_checks_its_arguments() -> None:
    """Bad options fail at construction, naming the argument."""
    with pytest.raises(ValueError, match="redis://"):
        RedisBackend.from_url("http://localhost")
    with pytest.raises(ValueError, match="prefix"):
        RedisBackend.from_url("redis://localhost", prefix="")
    with pytest.raises(ValueError, match="lease"):
        RedisBackend.from_url("redis://localhost", lease=0)
    with pytest.raises(ValueError, match=r"lease=1\) must be at least 3 x timeout"):
        RedisBackend.from_url("redis://localhost", lease=1, timeout=1)
    with pytest.raises(ValueError, match="max_finished"):
        RedisBackend.from_url("redis://localhost", max_finished=0)
    with pytest.raises(TypeError, match=r"coredis\.Redis"):
        RedisBackend("redis://localhost")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="backend must be a task backend"):
        TaskManager(backend=object())  # type: ignore[arg-type]
    backend = RedisBackend(coredis.Redis(decode_responses=True), prefix="shop")
    assert (backend.prefix, repr(backend)) == (
        "shop",
        "<RedisBackend prefix='shop' lease=10>",
    )


async def test_one_backend_serves_one_running_manager(redis_url: str) -> None:
    """A second manager on a backend in use fails to enter, with the fix."""
    backend = _backend(redis_url, "one")
    async with TaskManager(backend=backend):
        with pytest.raises(RuntimeError, match="give each manager its own backend"):
            async with TaskManager(backend=backend):
                pass  # pragma: no cover - never entered


async def test_a_manager_without_backend_mirrors_nothing() -> None:
    """No backend: the async reads are the local ones, and no link is made."""
    async with TaskManager() as manager:
        handle = manager.spawn(anyio.sleep, 0)
        await handle.wait()
        assert manager._engine.link is None
        assert await manager.aget(handle.id) == manager.get(handle.id)
        assert list(await manager.alist()) == list(manager.list())
        assert manager.backend is None


async def test_routes_answer_for_every_worker_and_503_while_redis_is_down(
    private_redis: RedisServer,
) -> None:
    """Both routers and the dashboard serve B's view of A's task; 503 when down.

    Redis then restarts empty: A's running task shows again on B, then its
    later progress and its end.
    """
    from fastapi import FastAPI
    from starlette.applications import Starlette
    from starlette.routing import Mount

    import bgtasks.fastapi
    import bgtasks.starlette

    step, release = anyio.Event(), anyio.Event()

    async def job() -> str:
        await step.wait()
        current_task().set_progress(0.5, "after the restart")
        await release.wait()
        return "ok"

    async with _workers(private_redis.url, "t") as (a, b):
        api = FastAPI()
        api.include_router(bgtasks.fastapi.task_router(b, prefix="/tasks"))
        site = Starlette(
            routes=[
                Mount("/tasks", bgtasks.starlette.task_router(b)),
                Mount("/dashboard", bgtasks.starlette.dashboard_router(b)),
            ]
        )
        done_before = a.spawn(anyio.sleep, 0)
        await _until(lambda: b.aget(done_before.id), _finished)
        handle = a.spawn(job)
        await _until(lambda: b.aget(handle.id), lambda i: i.state is TaskState.RUNNING)
        for app, listing in ((api, "/tasks"), (site, "/tasks/")):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(
                transport=transport, base_url="http://test"
            ) as http:
                got = await http.get(f"/tasks/{handle.id}")
                assert (got.status_code, got.json()["state"]) == (200, "running")
                listed = await http.get(listing)
                assert [t["id"] for t in listed.json()["tasks"]] == [
                    handle.id,
                    done_before.id,
                ]
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=site), base_url="http://test"
        ) as http:
            row = await http.get(f"/dashboard/api/tasks/{handle.id}")
            assert row.status_code == 200
            private_redis.stop()
            answers = [
                await http.get(f"/tasks/{handle.id}"),
                await http.get("/tasks/"),
                await http.delete(f"/tasks/{handle.id}"),
                await http.get(f"/dashboard/api/tasks/{handle.id}"),
            ]
            assert [r.status_code for r in answers] == [503, 503, 503, 503]
            assert answers[0].json() == {
                "detail": "task state backend unavailable, try again shortly"
            }
            assert answers[0].headers["retry-after"] == "1"
            # Restarted empty: RedisServer keeps nothing on disk (no RDB, no AOF).
            private_redis.restart()
            # A's next heartbeat finds its registration gone: its running task
            # is written whole again; the finished one stays gone with the data.
            back = await _until(
                lambda: b.aget(handle.id), lambda i: i.name != "", deadline=10
            )
            assert back.state is TaskState.RUNNING
            assert await b.aget(done_before.id) is None
            step.set()  # a later update of the running task reaches B too
            moved = await _until(
                lambda: b.aget(handle.id), lambda i: i.progress == 0.5, deadline=10
            )
            assert moved.state is TaskState.RUNNING
            assert moved.message == "after the restart"
            release.set()
            final_info = await _until(lambda: b.aget(handle.id), _finished, deadline=10)
            assert (final_info.state, final_info.result) == (TaskState.SUCCEEDED, "ok")
            later = a.spawn(job)
            await later.wait()
            await _until(lambda: b.aget(later.id), _finished, deadline=10)
            final = await http.get(f"/tasks/{later.id}")
            assert (final.status_code, final.json()["result"]) == (200, "ok")


async def test_transitions_made_in_worker_threads_reach_the_other_worker(
    redis_url: str, redis_prefix: str
) -> None:
    """Progress and attempts of a sync task, and a spawn from a thread, are mirrored."""
    import threading

    from bgtasks import retry

    proceed = threading.Event()
    tries: list[int] = []

    @retry(on=ConnectionError, attempts=2, backoff=lambda attempt: 0.0)
    def job() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("first try fails")
        current_task().set_progress(0.25, "a quarter")
        proceed.wait(5)
        return "done"

    async with _workers(redis_url, redis_prefix) as (a, b):
        handle = await anyio.to_thread.run_sync(a.spawn, job)
        info = await _until(lambda: b.aget(handle.id), lambda i: i.progress == 0.25)
        assert (info.state, info.attempt, info.message) == (
            TaskState.RUNNING,
            2,
            "a quarter",
        )
        proceed.set()
        final = await _until(lambda: b.aget(handle.id), _finished)
    assert (final.state, final.result) == (TaskState.SUCCEEDED, "done")


async def test_a_worker_back_after_its_lease_is_fenced_and_says_so(
    redis_url: str, redis_prefix: str, records: list[logging.LogRecord]
) -> None:
    """A's heartbeat resumes after B reaped it: A logs a WARNING, its writes bounce."""
    started = anyio.Event()

    async def job() -> None:
        started.set()
        await anyio.sleep_forever()

    async with _workers(redis_url, redis_prefix) as (a, b):
        handle = a.spawn(job)
        await started.wait()
        await _until(lambda: b.aget(handle.id), lambda i: i.state is TaskState.RUNNING)
        mirror = stop_mirroring(a)  # paused: no heartbeat, no flush
        await _until(lambda: b.aget(handle.id), _finished, deadline=10)
        async with anyio.create_task_group() as tg:
            await tg.start(mirror.run)  # back: its next heartbeat learns it
            with anyio.fail_after(5):
                while not any("declared dead" in r.getMessage() for r in records):
                    await anyio.sleep(0.02)
            assert await a.cancel(handle.id)
            assert (await handle.wait()).state == TaskState.CANCELLED
            await mirror.flush()
            tg.cancel_scope.cancel()
        info = await b.aget(handle.id)
    assert info is not None
    assert info.state == TaskState.INTERRUPTED
    fenced = [r for r in records if "declared dead" in r.getMessage()]
    assert [r.levelno for r in fenced] == [logging.WARNING]
