"""RedisStore against a real redis-server, on asyncio and trio."""

from __future__ import annotations

import math
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, cast

import anyio
import coredis
import pytest

from bgtasks import ClaimResult, IdempotencyRecord, idempotent
from bgtasks.exceptions import (
    BackendUnavailableError,
    RecordedError,
    RecordSerializationError,
)
from bgtasks.redis import JSONSerializer, RedisStore
from processes import run_together
from redis_server import CommandLog, RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[RedisStore]:
    """A store of this test's own prefix on the shared server, closed after."""
    made = RedisStore.from_url(redis_url, prefix=redis_prefix)
    yield made
    await made.aclose()


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[coredis.Redis[bytes]]:
    """A plain coredis client, to look at and meddle with the keys directly."""
    async with coredis.Redis.from_url(redis_url) as client:
        yield client


def record(value: object = None, fingerprint: str | None = None) -> IdempotencyRecord:
    return IdempotencyRecord(value, None, fingerprint)


async def claim(store: RedisStore, key: str, owner: str, lease: float = 5.0) -> Any:
    return await store.claim(key, owner=owner, lease=lease, fingerprint=None)


async def test_claim_complete_replay(store: RedisStore) -> None:
    """A claim runs once; its completed record replays to the next claimant and get."""
    first = await store.claim("f:k", owner="a", lease=5.0, fingerprint="fp")
    assert first.status == "claimed"
    assert first.fence > 0
    running = await store.claim("f:k", owner="b", lease=5.0, fingerprint="fp")
    assert running.status == "in_progress"
    assert running.fingerprint == "fp"
    assert 4.0 < running.retry_after <= 5.0
    done = await store.complete(
        "f:k", owner="a", fence=first.fence, record=record({"id": 7}, "fp"), ttl=60
    )
    assert done is True
    replay = await store.claim("f:k", owner="c", lease=5.0, fingerprint="fp")
    assert replay == ClaimResult("completed", record({"id": 7}, "fp"), "fp")
    assert await store.get("f:k") == record({"id": 7}, "fp")


@pytest.fixture
def commands(redis_server: RedisServer) -> Iterator[CommandLog]:
    """What clients send to the shared server from now on."""
    log = CommandLog(redis_server.port)
    yield log
    log.close()


async def test_a_first_call_costs_two_round_trips_and_a_replay_one(
    store: RedisStore, redis_prefix: str, commands: CommandLog
) -> None:
    """The issue's budget, counted from MONITOR: a decorated first call sends
    its claim and its completion, a replay only its claim, each one script."""

    @idempotent(key="{user}", store=store, fingerprint=True)
    async def send_welcome(user: str) -> dict[str, object]:
        return {"user": user, "sent": True}

    await send_welcome("warm")  # loads the scripts and opens the connection
    commands.sent(redis_prefix)
    assert await send_welcome("ada") == {"user": "ada", "sent": True}
    assert commands.sent(redis_prefix) == ["evalsha", "evalsha"]
    assert await send_welcome("ada") == {"user": "ada", "sent": True}
    assert commands.sent(redis_prefix) == ["evalsha"]


async def test_fingerprints_keep_none_and_empty_apart(store: RedisStore) -> None:
    """A fingerprint of "" is stored as "", and none as None."""
    empty = await store.claim("f:e", owner="a", lease=5.0, fingerprint="")
    assert (await claim(store, "f:e", "b")).fingerprint == ""
    await store.complete(
        "f:e", owner="a", fence=empty.fence, record=record(1, None), ttl=60
    )
    assert (await claim(store, "f:e", "b")).fingerprint is None


async def test_a_retried_claim_or_completion_finds_its_own(
    store: RedisStore,
) -> None:
    """Repeating a claim or a completion (a lost reply, retried) is no conflict."""
    held = await claim(store, "f:k", "a")
    again = await claim(store, "f:k", "a")
    assert again == ClaimResult("claimed", fence=held.fence)
    for _ in range(2):
        assert await store.complete(
            "f:k", owner="a", fence=held.fence, record=record(1), ttl=9
        )
    later = await claim(store, "f:k", "b")
    assert later.status == "completed"


async def test_wrong_owner_or_stale_fence_is_rejected(store: RedisStore) -> None:
    """Only the current owner with the current fence may complete or release."""
    held = await claim(store, "f:k", "a")
    assert (
        await store.complete(
            "f:k", owner="b", fence=held.fence, record=record(1), ttl=60
        )
        is False
    )
    assert (
        await store.complete(
            "f:k", owner="a", fence=held.fence - 1, record=record(1), ttl=60
        )
        is False
    )
    assert await store.release("f:k", owner="b", fence=held.fence) is False
    assert await store.release("f:k", owner="a", fence=held.fence + 1) is False
    assert (await claim(store, "f:k", "z")).status == "in_progress"
    assert await store.release("f:k", owner="a", fence=held.fence) is True
    again = await claim(store, "f:k", "b")
    assert again.status == "claimed"
    assert again.fence > held.fence
    assert await store.release("f:k", owner="a", fence=held.fence) is False


async def test_lapsed_lease_is_taken_over_by_exactly_one(store: RedisStore) -> None:
    """When a lease lapses, one of many concurrent claimants gets a new fence."""
    stale = await claim(store, "f:k", "old", lease=0.03)
    await anyio.sleep(0.05)
    results: list[ClaimResult] = []

    async def one(owner: str) -> None:
        results.append(await claim(store, "f:k", owner))

    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(one, f"o{i}")
    claimed = [r for r in results if r.status == "claimed"]
    assert len(claimed) == 1
    assert claimed[0].fence > stale.fence
    assert sorted({r.status for r in results}) == ["claimed", "in_progress"]
    assert (
        await store.complete(
            "f:k", owner="old", fence=stale.fence, record=record(1), ttl=60
        )
        is False
    )


async def test_200_concurrent_claims_yield_one_claimed(store: RedisStore) -> None:
    """200 concurrent claims of one key: exactly one is claimed, none completed."""
    statuses: list[str] = []

    async def one(owner: str) -> None:
        statuses.append((await claim(store, "f:hot", owner)).status)

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(one, f"o{i}")
    assert statuses.count("claimed") == 1
    assert statuses.count("in_progress") == 199


async def test_wait_is_woken_by_a_completion_on_another_connection(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """A waiter wakes when another client (another process, say) completes the key."""
    other = RedisStore.from_url(redis_url, prefix=redis_prefix)
    held = await claim(other, "f:k", "a")
    woke: list[float] = []

    async def waiter() -> None:
        start = anyio.current_time()
        await store.wait("f:k", timeout=10)
        woke.append(anyio.current_time() - start)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await _until_subscribed(store)
        await other.complete(
            "f:k", owner="a", fence=held.fence, record=record(1), ttl=9
        )
    await other.aclose()
    assert len(woke) == 1
    assert woke[0] < 2


async def _until_subscribed(store: RedisStore) -> None:
    # The landing channel has a subscriber once the waiter looks at the key.
    with anyio.fail_after(5):
        while not store._listeners or not all(
            listener.subscribed.is_set() for listener in store._listeners.values()
        ):
            await anyio.sleep(0.005)
    await anyio.sleep(0.01)


async def test_wait_is_woken_from_another_event_loop_in_another_thread(
    store: RedisStore, anyio_backend: str
) -> None:
    """The same store object completes in another thread's loop; this loop wakes."""
    held = await claim(store, "f:k", "a")
    other_backend = "trio" if anyio_backend == "asyncio" else "asyncio"

    async def complete_there() -> None:
        await store.complete(
            "f:k", owner="a", fence=held.fence, record=record(2), ttl=9
        )
        await store.aclose()

    woke = anyio.Event()

    async def waiter() -> None:
        await store.wait("f:k", timeout=10)
        woke.set()

    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await _until_subscribed(store)
        await anyio.to_thread.run_sync(
            lambda: anyio.run(complete_there, backend=other_backend)
        )
        with anyio.fail_after(5):
            await woke.wait()
    assert anyio.current_time() - start < 5
    assert await store.get("f:k") == record(2)


async def test_many_waiters_share_one_subscription(
    redis_url: str, redis_prefix: str, store: RedisStore
) -> None:
    """50 waiters of one loop use one subscription, and one landing wakes them all."""
    other = RedisStore.from_url(redis_url, prefix=redis_prefix)
    held = await claim(other, "f:k", "a")
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await store.wait("f:k", timeout=10)
        woken.append(i)

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            for i in range(50):
                tg.start_soon(waiter, i)
            await _until_subscribed(store)
            assert len(store._listeners) == 1
            assert next(iter(store._listeners.values())).users == 50
            await other.release("f:k", owner="a", fence=held.fence)
    await other.aclose()
    assert sorted(woken) == list(range(50))
    assert store._listeners == {}


async def test_wait_polls_again_when_the_message_is_missed(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """A claim that lands without a message ends a wait after its timeout, not never."""
    await claim(store, "f:k", "a")
    state = store.keys_of("f:k")[0]
    start = anyio.current_time()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.wait("f:k", timeout=0.08))
        await _until_subscribed(store)
        await raw.delete([state])  # gone, and nobody published it
    elapsed = anyio.current_time() - start
    assert 0.07 <= elapsed < 1
    assert (await claim(store, "f:k", "b")).status == "claimed"


async def test_wait_returns_at_once_when_nothing_runs(store: RedisStore) -> None:
    """Waiting on a key with no running claim returns without waiting."""
    start = anyio.current_time()
    await store.wait("f:free", timeout=10)
    assert anyio.current_time() - start < 2
    assert store._listeners == {}  # the last waiter unsubscribed


async def test_records_and_claims_expire(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """Every key expires: a claim with its lease, a record and its counter with ttl."""
    held = await claim(store, "f:k", "a", lease=5.0)
    state, counter = store.keys_of("f:k")
    assert 0 < await raw.pttl(state) <= 5000
    assert 0 < await raw.pttl(counter) <= 5000
    await store.complete("f:k", owner="a", fence=held.fence, record=record(1), ttl=0.05)
    assert 0 < await raw.pttl(state) <= 50
    assert 4000 < await raw.pttl(counter) <= 5000  # never shorter than the claim
    assert await store.get("f:k") == record(1)
    await anyio.sleep(0.06)
    assert await store.get("f:k") is None
    assert (await claim(store, "f:k", "b")).status == "claimed"


async def test_an_infinite_ttl_never_expires(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """``ttl=math.inf`` keeps the record and its fence counter for good."""
    held = await claim(store, "f:k", "a")
    await store.complete(
        "f:k", owner="a", fence=held.fence, record=record(1), ttl=math.inf
    )
    state, counter = store.keys_of("f:k")
    assert await raw.pttl(state) == -1
    assert await raw.pttl(counter) == -1


async def test_fences_grow_even_after_the_counter_expired(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """A new fence beats every earlier one, even once the counter key is gone."""
    first = await claim(store, "f:k", "a")
    await store.release("f:k", owner="a", fence=first.fence)
    await raw.delete([store.keys_of("f:k")[1]])
    second = await claim(store, "f:k", "b")
    assert second.fence > first.fence


async def test_values_round_trip_as_json(store: RedisStore) -> None:
    """JSON values come back equal; tuples come back as lists."""
    value = {"name": "Zoë", "n": [1, 2.5, None, True], "t": (1, 2)}
    held = await claim(store, "f:k", "a")
    await store.complete(
        "f:k", owner="a", fence=held.fence, record=record(value), ttl=9
    )
    found = await store.get("f:k")
    assert found == record({"name": "Zoë", "n": [1, 2.5, None, True], "t": [1, 2]})


async def test_none_is_a_value_too(store: RedisStore) -> None:
    """A call that returned None replays None, as completed."""
    held = await claim(store, "f:k", "a")
    await store.complete("f:k", owner="a", fence=held.fence, record=record(None), ttl=9)
    assert await claim(store, "f:k", "b") == ClaimResult("completed", record(None))


async def test_a_value_json_cannot_hold_fails_and_releases(store: RedisStore) -> None:
    """A non-serializable value is a clear TypeError, and the key is free again."""
    held = await claim(store, "f:k", "a")
    with pytest.raises(
        RecordSerializationError, match=r"the result \(a set\) cannot be stored"
    ):
        await store.complete(
            "f:k", owner="a", fence=held.fence, record=record({1, 2}), ttl=9
        )
    assert issubclass(RecordSerializationError, TypeError)
    assert (await claim(store, "f:k", "b")).status == "claimed"


async def test_a_serializer_hook_is_used_both_ways(
    redis_url: str, redis_prefix: str
) -> None:
    """``serializer=`` turns values into bytes and back, instead of JSON."""

    class Upper:
        def dumps(self, obj: object, /) -> str:
            return str(obj).upper()

        def loads(self, data: bytes, /) -> object:
            return data.decode().lower()

    store = RedisStore.from_url(redis_url, prefix=redis_prefix, serializer=Upper())
    held = await claim(store, "f:k", "a")
    await store.complete("f:k", owner="a", fence=held.fence, record=record("Hi"), ttl=9)
    assert await store.get("f:k") == record("hi")
    await store.aclose()


async def test_foreign_bytes_are_a_clear_error(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """A record not written as JSON raises RecordSerializationError on read."""
    state = store.keys_of("f:k")[0]
    await raw.hset(state, {"s": "done", "v": b"\x80pickle?"})
    with pytest.raises(RecordSerializationError, match="another serializer"):
        await store.get("f:k")


class CardDeclinedError(Exception):
    """A recorded error type of the tests."""


class ExpiredCardError(CardDeclinedError):
    """A subclass of a listed type."""


class NeedsTwoError(Exception):
    """Cannot be rebuilt from its args alone."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


async def _replayed_error(store: RedisStore, key: str, exc: Exception) -> Any:
    held = await claim(store, key, "a")
    await store.complete(
        key, owner="a", fence=held.fence, record=IdempotencyRecord(None, exc), ttl=9
    )
    found = await claim(store, key, "b")
    assert found.status == "completed"
    return found.record.error


async def test_a_recorded_error_comes_back_as_a_descriptor(store: RedisStore) -> None:
    """An error replays as a RecordedError naming its type and message."""
    error = await _replayed_error(store, "f:k", CardDeclinedError("no funds", 42))
    assert isinstance(error, RecordedError)
    assert error.type_name == f"{__name__}.CardDeclinedError"
    assert error.message == "('no funds', 42)"
    assert error.error_args == ("no funds", 42)
    assert error.resolve(()) is error
    assert error.resolve((ValueError,)) is error


async def test_a_listed_type_is_rebuilt(store: RedisStore) -> None:
    """Listed types, and subclasses of listed types, are rebuilt from their args."""
    error = await _replayed_error(store, "f:a", CardDeclinedError("no funds"))
    rebuilt = error.resolve((CardDeclinedError,))
    assert type(rebuilt) is CardDeclinedError
    assert rebuilt.args == ("no funds",)
    sub = await _replayed_error(store, "f:b", ExpiredCardError("2020"))
    assert type(sub.resolve((CardDeclinedError,))) is ExpiredCardError


async def test_an_error_that_cannot_be_rebuilt_stays_a_descriptor(
    store: RedisStore,
) -> None:
    """Args that are not JSON, or a constructor refusing them, keep the descriptor."""
    odd = await _replayed_error(store, "f:a", CardDeclinedError(object()))
    assert odd.error_args is None
    assert odd.resolve((CardDeclinedError,)) is odd
    two = await _replayed_error(store, "f:b", NeedsTwoError("x", "y"))
    assert two.error_args == ("x/y",)
    assert two.resolve((NeedsTwoError,)) is two
    assert str(two) == f"{__name__}.NeedsTwoError: x/y"


async def test_a_replayed_descriptor_records_the_original(store: RedisStore) -> None:
    """Recording a RecordedError again keeps the original type and args."""
    first = await _replayed_error(store, "f:a", CardDeclinedError("no"))
    again = await _replayed_error(store, "f:b", first)
    assert (again.type_name, again.error_args) == (first.type_name, ("no",))


async def test_forget_frees_the_key_and_fences_off_the_runner(
    store: RedisStore,
) -> None:
    """After forget, the next claim runs and the former owner cannot complete."""
    held = await claim(store, "f:k", "a")
    await store.forget("f:k")
    again = await claim(store, "f:k", "b")
    assert again.status == "claimed"
    assert again.fence > held.fence
    assert (
        await store.complete(
            "f:k", owner="a", fence=held.fence, record=record(1), ttl=9
        )
        is False
    )


async def test_aclose_closes_the_connections_and_a_later_call_reopens(
    store: RedisStore, raw: coredis.Redis[bytes]
) -> None:
    """aclose drops this loop's connections; the store reconnects when used again."""
    before = await _clients(raw)
    await claim(store, "f:k", "a")
    assert await _clients(raw) == before + 1
    await store.aclose()
    with anyio.fail_after(2):
        while await _clients(raw) != before:
            await anyio.sleep(0.005)
    assert (await claim(store, "f:k", "b")).status == "in_progress"


async def _clients(raw: coredis.Redis[bytes]) -> int:
    info = await raw.info("clients")
    return int(cast("int", info["connected_clients"]))


async def test_redis_down_is_backend_unavailable_then_recovers(
    private_redis: RedisServer,
) -> None:
    """Killed Redis: calls fail fast (BackendUnavailableError); restarted, they work."""
    store = RedisStore.from_url(private_redis.url, prefix="p", timeout=0.5)
    held = await claim(store, "f:k", "a")
    private_redis.kill()
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match=r"Redis at redis://127\.0\.0\.1"):
        await claim(store, "f:k", "b")
    assert time.monotonic() - start < 1.0
    private_redis.restart()
    again = await claim(store, "f:k", "b")  # the restarted server has no data
    assert again.status == "claimed"
    assert again.fence > held.fence
    await store.aclose()


async def test_wait_ends_quietly_when_redis_is_gone(
    private_redis: RedisServer,
) -> None:
    """A wait with Redis down returns by its timeout; the next claim reports it."""
    store = RedisStore.from_url(private_redis.url, prefix="p", timeout=1.0)
    await claim(store, "f:k", "a")
    private_redis.kill()
    start = time.monotonic()
    await store.wait("f:k", timeout=0.08)
    assert time.monotonic() - start < 0.5
    with pytest.raises(BackendUnavailableError):
        await claim(store, "f:k", "b")
    await store.aclose()


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="the-client-bounds-each-call"),
        # The URL's own (longer) timeouts: the store's deadline still holds.
        pytest.param("?stream_timeout=30&connect_timeout=30", id="the-store-bounds-it"),
    ],
)
async def test_a_frozen_redis_times_out(private_redis: RedisServer, query: str) -> None:
    """A server that stops answering costs one timeout, then works once it resumes."""
    store = RedisStore.from_url(private_redis.url + query, prefix="p", timeout=0.1)
    await claim(store, "f:k", "a")
    private_redis.pause()
    start = time.monotonic()
    try:
        with pytest.raises(BackendUnavailableError, match=r"within 0\.1s"):
            await store.get("f:k")
        assert time.monotonic() - start < 0.5
    finally:
        private_redis.resume()
    with anyio.fail_after(2):
        assert (await claim(store, "f:k", "b")).status == "in_progress"
    await store.aclose()


async def test_a_users_client_is_used_and_left_open(
    redis_url: str, redis_prefix: str
) -> None:
    """A client passed in serves the store; aclose leaves it to its owner."""
    async with coredis.Redis.from_url(redis_url) as client:
        store = RedisStore(client, prefix=redis_prefix)
        held = await claim(store, "f:k", "a")
        waited = anyio.Event()

        async def waiter() -> None:
            await store.wait("f:k", timeout=10)
            waited.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            await _until_subscribed(store)
            await store.release("f:k", owner="a", fence=held.fence)
            with anyio.fail_after(5):
                await waited.wait()
        await store.aclose()
        assert await client.ping() == b"PONG"


_WORKER = """
import json, os, sys
import anyio
from bgtasks._idempotency.stores import IdempotencyRecord
from bgtasks.redis import RedisStore

url, prefix, backend, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
store = RedisStore.from_url(url, prefix=prefix)
outcomes = []

async def call(i):
    owner = f"{os.getpid()}-{i}"
    while True:
        found = await store.claim("k", owner=owner, lease=120, fingerprint=None)
        if found.status == "claimed":
            await anyio.sleep(0.05)  # the body
            value = {"ran_by": os.getpid()}
            record = IdempotencyRecord(value, None, None)
            await store.complete(
                "k", owner=owner, fence=found.fence, record=record, ttl=60
            )
            outcomes.append("ran")
            return
        if found.status == "completed":
            outcomes.append(found.record.value["ran_by"])
            return
        await store.wait("k", timeout=found.retry_after)

async def main():
    sys.stdin.readline()  # the go signal: both processes start together
    async with anyio.create_task_group() as tg:
        for i in range(count):
            tg.start_soon(call, i)
    await store.aclose()

anyio.run(main, backend=backend)
print(json.dumps({"pid": os.getpid(), "outcomes": outcomes}))
"""


def test_two_processes_run_one_body_and_share_its_result(
    redis_url: str, redis_prefix: str
) -> None:
    """200 duplicates over two processes: one runs, the rest get its result fast."""
    # The lease is 120 s: ending within the 30 s bound means the waiters were
    # woken across processes, not released by the lease running out.
    reports = run_together(_WORKER, redis_url, redis_prefix, "100", timeout=30)
    outcomes = [o for report in reports for o in report["outcomes"]]
    assert outcomes.count("ran") == 1
    runner = next(r["pid"] for r in reports if "ran" in r["outcomes"])
    assert set(outcomes) == {"ran", runner}
    assert len(outcomes) == 200


def _documented_acl() -> list[str]:
    page = Path(__file__).resolve().parent.parent / "docs" / "workers.md"
    line = next(
        line.strip()
        for line in page.read_text(encoding="utf-8").splitlines()
        if line.strip().startswith("ACL SETUSER shop ")
    )
    return line.split()[3:]


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="needs redis-cli")
async def test_the_documented_acl_user_can_do_everything(
    private_redis: RedisServer,
) -> None:
    """The ACL line of docs/workers.md grants the store all it needs, and no more."""
    cli = ["redis-cli", "-p", str(private_redis.port)]
    done = subprocess.run(
        [*cli, "ACL", "SETUSER", "shop", *_documented_acl()],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "OK"
    url = f"redis://shop:change-me@127.0.0.1:{private_redis.port}/0"
    store = RedisStore.from_url(url, prefix="shop")
    held = await claim(store, "f:k", "a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: store.wait("f:k", timeout=5))
        await _until_subscribed(store)
        await store.complete(
            "f:k", owner="a", fence=held.fence, record=record(1), ttl=9
        )
    assert await store.get("f:k") == record(1)
    await store.forget("f:k")
    assert await store.release("f:k", owner="a", fence=held.fence) is False
    await store.aclose()
    other = RedisStore.from_url(url, prefix="other")
    with pytest.raises(BackendUnavailableError, match="AuthorizationError"):
        await other.get("f:k")
    await other.aclose()


def test_a_store_made_at_import_time_serves_successive_loops(
    redis_url: str, redis_prefix: str
) -> None:
    """One store, made outside any loop, works under asyncio and then trio."""
    store = RedisStore.from_url(redis_url, prefix=redis_prefix)
    seen: list[str] = []

    async def use(owner: str) -> None:
        seen.append((await claim(store, "f:k", owner)).status)

    anyio.run(use, "a", backend="asyncio")
    anyio.run(use, "b", backend="trio")
    anyio.run(store.aclose, backend="trio")
    assert seen == ["claimed", "in_progress"]
    assert store._connector._hosts == {}  # each loop's host ended with it


def test_keys_of_one_key_share_a_hash_tag() -> None:
    """Both Redis keys of a key share one ``{...}`` tag; braces in a key are hashed."""
    store = RedisStore.from_url("redis://localhost", prefix="shop")
    assert store.keys_of("send:a@x") == (
        "shop:idem:{send:a@x}:s",
        "shop:idem:{send:a@x}:n",
    )
    state, counter = store.keys_of("send:{odd}")
    tag = state.split("{")[1].split("}")[0]
    assert len(tag) == 64
    assert counter == f"shop:idem:{{{tag}}}:n"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"prefix": ""}, TypeError, "non-empty str"),
        ({"prefix": "a{b}"}, ValueError, "braces"),
        ({"timeout": 0}, ValueError, "positive and finite"),
        ({"timeout": math.inf}, ValueError, "positive and finite"),
        ({"timeout": "2"}, TypeError, "number of seconds"),
        ({"serializer": object()}, TypeError, "dumps"),
    ],
)
def test_bad_arguments_fail_at_construction(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option names itself and the fix when the store is made."""
    with pytest.raises(error, match=match):
        RedisStore.from_url("redis://localhost", **kwargs)


@pytest.mark.parametrize("url", ["http://localhost", "localhost:6379", 6379])
def test_a_bad_url_fails_at_construction(url: Any) -> None:
    """from_url refuses what is not a redis://, rediss:// or unix:// URL."""
    with pytest.raises(ValueError, match="redis://, rediss:// or unix://"):
        RedisStore.from_url(url)


def test_a_client_must_be_a_coredis_client() -> None:
    """RedisStore(client) refuses anything but a coredis client, naming from_url."""
    with pytest.raises(TypeError, match="from_url"):
        RedisStore("redis://localhost")  # type: ignore[arg-type]


def test_errors_name_the_server_without_credentials() -> None:
    """The store's repr, like its errors, never shows the password in the URL."""
    store = RedisStore.from_url("rediss://app:s3cret@cache.internal:6380/2")
    assert repr(store) == "RedisStore('rediss://cache.internal:6380', prefix='bgtasks')"


def _tls_of(store: RedisStore) -> ssl.SSLContext:
    client = store._connector._factory()  # type: ignore[misc]
    context = client.connection_pool.connection_kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    return context


def test_tls_urls_verify_the_server_by_default() -> None:
    """A rediss:// URL checks the certificate and host name unless it says not to."""
    strict = _tls_of(RedisStore.from_url("rediss://cache.internal:6380/0"))
    assert (strict.verify_mode, strict.check_hostname) == (ssl.CERT_REQUIRED, True)
    loose = _tls_of(RedisStore.from_url("rediss://cache.internal/0?ssl_cert_reqs=none"))
    assert loose.verify_mode == ssl.CERT_NONE


def test_json_serializer_refuses_nan() -> None:
    """The default serializer writes strict JSON: NaN is an error, not a token."""
    with pytest.raises(ValueError, match="JSON"):
        JSONSerializer().dumps(math.nan)
