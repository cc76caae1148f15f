"""RedisStore and RedisBackend on a real three-primary Redis Cluster, both backends.

Every script must keep to one slot and every command must reach the node that
owns its keys: a single server proves neither.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import coredis
import pytest

from bgtasks import TaskInfo, TaskManager, TaskState, idempotent
from bgtasks.redis import RedisBackend, RedisStore
from redis_server import RedisCluster
from redis_workers import stop_mirroring

pytestmark = pytest.mark.anyio


async def _until(
    read: Callable[[], Awaitable[TaskInfo | None]],
    check: Callable[[TaskInfo], bool],
) -> TaskInfo:
    with anyio.fail_after(10):
        while True:
            info = await read()
            if info is not None and check(info):
                return info
            await anyio.sleep(0.02)


@contextlib.asynccontextmanager
async def _client(
    cluster: RedisCluster, *, decode: bool
) -> AsyncIterator[coredis.RedisCluster[Any]]:
    """An entered cluster client, and afterwards what coredis 6.9 leaves open.

    Its cluster layout makes a memory stream pair for node errors that
    nothing closes, so the garbage collector warns about it in a later test.
    """
    client: coredis.RedisCluster[Any] = coredis.RedisCluster(
        "127.0.0.1", cluster.port, decode_responses=decode
    )
    try:
        async with client:
            yield client
    finally:
        layout = getattr(client.connection_pool, "cluster_layout", None)
        for stream in getattr(layout, "_error_stream", ()):
            stream.close()


async def test_the_store_runs_a_duplicate_once_on_a_cluster(
    redis_cluster: RedisCluster,
) -> None:
    """Concurrent duplicates run once; many keys land on every node and replay."""
    prefix = f"c{uuid.uuid4().hex[:8]}"
    runs: list[int] = []
    gate = anyio.Event()
    async with _client(redis_cluster, decode=False) as client:
        store = RedisStore(client, prefix=prefix)

        @idempotent(key="order:{n}", store=store, wait_timeout=10)
        async def charge(n: int) -> int:
            runs.append(n)
            if n == 0:
                await gate.wait()
            return n * 10

        results: list[int] = []

        async def call(n: int) -> None:
            results.append(await charge(n))

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(call, 0)
            with anyio.fail_after(5):
                while not runs:
                    await anyio.sleep(0.01)
            gate.set()
        assert (runs, results) == ([0], [0] * 5)
        # Forty keys spread over the three nodes' slots: each runs once.
        assert [await charge(n) for n in range(1, 41)] == [n * 10 for n in range(1, 41)]
        assert [await charge(n) for n in range(1, 41)] == [n * 10 for n in range(1, 41)]
        assert sorted(runs) == list(range(41))


@contextlib.asynccontextmanager
async def _workers(
    cluster: RedisCluster,
) -> AsyncIterator[tuple[TaskManager, TaskManager]]:
    prefix = f"c{uuid.uuid4().hex[:8]}"
    async with (
        _client(cluster, decode=True) as one,
        _client(cluster, decode=True) as two,
    ):
        a = TaskManager(
            backend=RedisBackend(one, prefix=prefix, lease=1.5, timeout=0.5),
            drain_timeout=0,
        )
        b = TaskManager(
            backend=RedisBackend(two, prefix=prefix, lease=1.5, timeout=0.5),
            drain_timeout=0,
        )
        async with a, b:
            yield a, b


async def test_the_backend_shares_tasks_across_a_cluster(
    redis_cluster: RedisCluster,
) -> None:
    """B reads, lists and cancels A's tasks; a finished one is seen finished."""
    release = anyio.Event()

    async def job(n: int) -> int:
        await release.wait()
        return n

    async def forever() -> None:
        await anyio.sleep_forever()

    async with _workers(redis_cluster) as (a, b):
        handles = [a.spawn(job, n) for n in range(20)]
        stuck = a.spawn(forever)
        for handle in handles:
            await _until(
                functools.partial(b.aget, handle.id),
                lambda i: i.state is TaskState.RUNNING,
            )
        listed = await b.alist(limit=100)
        assert {h.id for h in handles} | {stuck.id} <= {info.id for info in listed}
        release.set()
        for n, handle in enumerate(handles):
            info = await _until(
                functools.partial(b.aget, handle.id), lambda i: i.state.is_finished
            )
            assert (info.state, info.result) == (TaskState.SUCCEEDED, n)
            assert (await handle.wait(timeout=5)).result == n
        assert await b.cancel(stuck.id) is True
        final = await stuck.wait(timeout=5)
        assert final.state is TaskState.CANCELLED
        seen = await _until(lambda: b.aget(stuck.id), lambda i: i.state.is_finished)
        assert seen.state is TaskState.CANCELLED
        finished = await b.alist(state=TaskState.SUCCEEDED, limit=100)
        assert {h.id for h in handles} <= {info.id for info in finished}
        # The dashboard's view over every worker: counts and run times.
        backend = b.backend
        assert isinstance(backend, RedisBackend)
        stats = await backend.stats()
        assert stats.counts[TaskState.SUCCEEDED] == 20
        assert stats.counts[TaskState.CANCELLED] == 1
        assert stats.duration_p50 is not None


async def test_the_change_feed_works_on_a_cluster(redis_cluster: RedisCluster) -> None:
    """B's dashboard feed reads the tasks A wrote while B watches."""
    async with _workers(redis_cluster) as (a, b):
        backend = b.backend
        assert isinstance(backend, RedisBackend)
        start = await backend.changes(None)  # B watches from now on
        handle = a.spawn(anyio.sleep, 0)
        await handle.wait(timeout=5)
        seen: set[str] = set()
        position = start.position
        with anyio.fail_after(10):
            while handle.id not in seen:
                found = await backend.changes(position)
                position = found.position
                seen.update(info.id for info in found.tasks)
                await anyio.sleep(0.05)


async def test_a_lost_worker_is_reaped_on_a_cluster(
    redis_cluster: RedisCluster,
) -> None:
    """A's mirror stops without unregistering: B reports its task interrupted."""
    started = anyio.Event()

    async def job() -> None:
        started.set()
        await anyio.sleep_forever()

    async with _workers(redis_cluster) as (a, b):
        handle = a.spawn(job)
        await started.wait()
        await _until(lambda: b.aget(handle.id), lambda i: i.state is TaskState.RUNNING)
        stop_mirroring(a)
        info = await _until(lambda: b.aget(handle.id), lambda i: i.state.is_finished)
        assert (info.state, info.cancel_reason) == (
            TaskState.INTERRUPTED,
            "worker lost",
        )
