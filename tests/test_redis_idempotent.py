"""@idempotent with RedisStore on a real redis-server: once, across processes too."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import anyio
import anyio.to_thread
import pytest

from bgtasks import idempotent
from bgtasks.exceptions import (
    BackendUnavailableError,
    NoEventLoopError,
    RecordedError,
    RecordSerializationError,
)
from bgtasks.redis import RedisStore
from processes import run_together
from redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """A store of this test's own prefix on the shared server, closed after."""
    made = RedisStore.from_url(redis_url, prefix=redis_prefix)
    yield made
    await made.aclose()


async def test_first_call_runs_and_a_duplicate_replays(store: RedisStore) -> None:
    """The body runs once; the duplicate gets the recorded (JSON) result."""
    runs: list[str] = []

    @idempotent(key="welcome:{email}", store=store)
    async def send(email: str) -> dict[str, str]:
        runs.append(email)
        return {"sent": email}

    assert await send("a@x") == {"sent": "a@x"}
    assert await send("a@x") == {"sent": "a@x"}
    assert runs == ["a@x"]


async def test_concurrent_duplicates_on_one_loop_wait_for_the_first(
    store: RedisStore,
) -> None:
    """Fifty duplicates at once: one body, everyone gets its result, woken by Redis."""
    runs: list[int] = []
    gate = anyio.Event()

    @idempotent(key="k", store=store, lease=30)
    async def task() -> int:
        runs.append(1)
        await gate.wait()
        return 7

    results: list[int] = []

    async def call() -> None:
        results.append(await task())

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(call)
            while not runs:
                await anyio.sleep(0.001)
            gate.set()
    assert results == [7] * 50
    assert runs == [1]


async def test_sync_function_in_a_worker_thread_reaches_the_store(
    store: RedisStore,
) -> None:
    """A sync task in a worker thread (as Starlette runs it) claims and replays."""
    runs: list[int] = []

    @idempotent(key="k", store=store)
    def task(n: int) -> int:
        runs.append(n)
        return n * 2

    assert await anyio.to_thread.run_sync(task, 21) == 42
    assert await anyio.to_thread.run_sync(task, 99) == 42
    assert runs == [21]


def test_sync_function_with_no_loop_is_a_clear_error() -> None:
    """No event loop to reach an async store: NoEventLoopError names the fixes."""
    store = RedisStore.from_url("redis://127.0.0.1:1", prefix="never")
    runs: list[int] = []

    @idempotent(key="k", store=store)
    def task() -> int:
        runs.append(1)
        return 1

    with pytest.raises(NoEventLoopError, match=r"task\(\).*async def.*MemoryStore"):
        task()
    assert runs == []


async def test_an_unserializable_result_is_an_error_and_frees_the_key(
    store: RedisStore,
) -> None:
    """A result JSON cannot hold: the error names the function; the next call runs."""
    runs: list[int] = []

    @idempotent(key="k", store=store)
    async def make_set() -> object:
        runs.append(1)
        return {1, 2} if len(runs) == 1 else [1, 2]

    with pytest.raises(RecordSerializationError, match=r"make_set\(\)") as caught:
        await make_set()
    assert "{1, 2}" not in str(caught.value)
    assert await make_set() == [1, 2]
    assert runs == [1, 1]


class OrderError(Exception):
    """An error type the app lists in record_errors."""


async def test_recorded_errors_replay_as_their_type_when_listed(
    store: RedisStore,
) -> None:
    """A listed error is rebuilt from Redis; unlisted, it stays a RecordedError."""
    runs: list[int] = []

    @idempotent(key="k", namespace="orders", store=store, record_errors=OrderError)
    async def place() -> None:
        runs.append(1)
        raise OrderError("out of stock")

    @idempotent(key="k", namespace="orders", store=store)
    async def other_reader() -> None:
        runs.append(2)

    with pytest.raises(OrderError):
        await place()
    with pytest.raises(OrderError, match="out of stock"):
        await place()
    with pytest.raises(RecordedError, match="OrderError: out of stock"):
        await other_reader()
    assert runs == [1]


async def test_a_cancelled_call_releases_its_claim(store: RedisStore) -> None:
    """Cancelled mid-body, the claim is still released (shielded): next call runs."""
    started = anyio.Event()
    runs: list[int] = []

    @idempotent(key="k", store=store, lease=60)
    async def task() -> int:
        runs.append(1)
        if len(runs) == 1:
            started.set()
            await anyio.sleep_forever()
        return 3

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(task)
            await started.wait()
            tg.cancel_scope.cancel()
        assert await task() == 3
    assert runs == [1, 1]


async def test_redis_down_fails_closed_or_runs_when_asked(
    private_redis: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Killed Redis: no run unless on_store_error="run"; restarted, all works again."""
    store = RedisStore.from_url(private_redis.url, prefix="p", timeout=0.3)
    runs: list[str] = []

    @idempotent(key="k", store=store)
    async def closed() -> str:
        runs.append("closed")
        return "c"

    @idempotent(key="k", namespace="open", store=store, on_store_error="run")
    async def open_() -> str:
        runs.append("open")
        return "o"

    assert await closed() == "c"
    private_redis.kill()
    with pytest.raises(BackendUnavailableError, match=r"Redis at redis://127\.0\.0\.1"):
        await closed()
    with caplog.at_level(logging.WARNING, logger="bgtasks"):
        assert await open_() == "o"
    assert runs == ["closed", "open"]
    assert 'on_store_error="run"' in caplog.text
    private_redis.restart()  # an empty server: the same store works again
    assert await closed() == "c"
    assert runs == ["closed", "open", "closed"]
    await store.aclose()


def test_on_store_error_is_checked_at_decoration() -> None:
    """An unknown on_store_error fails at decoration, naming the option."""
    with pytest.raises(ValueError, match=r"on_store_error='ignore'"):
        idempotent(key="k", on_store_error="ignore")  # type: ignore[call-overload]


_WORKER = """
import json, os, sys
import anyio
from bgtasks import idempotent
from bgtasks.redis import RedisStore

url, prefix, backend, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = RedisStore.from_url(url, prefix=prefix)
outcomes = []

@idempotent(key="signup:{email}", namespace="signup", store=store, lease=120)
async def signup(email):
    await anyio.sleep(0.05)  # the body
    outcomes.append("ran")
    return {"ran_by": os.getpid()}

async def call():
    outcomes.append((await signup("a@x"))["ran_by"])

async def main():
    sys.stdin.readline()  # the go signal: both processes start together
    async with anyio.create_task_group() as tg:
        for _ in range(count):
            tg.start_soon(call)
    await store.aclose()

anyio.run(main, backend=backend)
print(json.dumps({"pid": os.getpid(), "outcomes": outcomes}))
"""


def test_two_processes_run_the_decorated_body_once(
    redis_url: str, redis_prefix: str
) -> None:
    """200 decorated duplicates over two processes: one body, everyone its result."""
    # The lease is 120 s: ending within the 30 s bound means the waiters were
    # woken across processes, not released by the lease running out.
    reports = run_together(_WORKER, redis_url, redis_prefix, "100", timeout=30)
    outcomes = [o for report in reports for o in report["outcomes"]]
    assert outcomes.count("ran") == 1
    runner = next(r["pid"] for r in reports if "ran" in r["outcomes"])
    assert set(outcomes) == {"ran", runner}
    assert len(outcomes) == 201
