"""MemoryStore keeps claims and records atomically, bounded, expiring by its clock."""

from __future__ import annotations

import threading
from datetime import timedelta

import anyio
import pytest

from bgtasks import IdempotencyStore, MemoryStore
from bgtasks._clock import ManualClock
from bgtasks._idempotency.stores import ClaimResult, IdempotencyRecord, LocalStore
from bgtasks._idempotency.waiting import board

pytestmark = pytest.mark.anyio


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    """A small store on the manual clock."""
    return MemoryStore(max_entries=3, clock=clock)


async def _claim(store: MemoryStore, key: str, owner: str, lease: float = 10) -> int:
    found = await store.claim(key, owner=owner, lease=lease, fingerprint=None)
    assert found.status == "claimed"
    return found.fence


async def _complete(
    store: MemoryStore, key: str, value: object, ttl: float = 60.0
) -> None:
    fence = await _claim(store, key, "o")
    record = IdempotencyRecord(value)
    assert await store.complete(key, owner="o", fence=fence, record=record, ttl=ttl)


def test_memory_store_implements_the_protocol() -> None:
    """MemoryStore passes the runtime checks of the public and the local protocol."""
    assert isinstance(MemoryStore(), IdempotencyStore)
    assert isinstance(MemoryStore(), LocalStore)
    assert not isinstance(object(), IdempotencyStore)


async def test_claim_complete_and_replay(store: MemoryStore) -> None:
    """A completed key reports its record, the very same value object, every time."""
    value = ("a", 1)
    found = await store.claim("k", owner="o1", lease=5, fingerprint="f")
    record = IdempotencyRecord(value, None, "f")
    assert await store.complete(
        "k", owner="o1", fence=found.fence, record=record, ttl=60
    )
    found = await store.claim("k", owner="o2", lease=5, fingerprint="f")
    assert found.status == "completed"
    assert found.record is record
    assert found.fingerprint == "f"
    assert await store.claim("k", owner="o3", lease=5, fingerprint=None) is found
    got = await store.get("k")
    assert got is not None
    assert got.value is value


async def test_every_claim_gets_a_larger_fence(
    store: MemoryStore, clock: ManualClock
) -> None:
    """Fences grow with each claim of a key, a lapsed lease's takeover included."""
    first = await _claim(store, "k", "o1", lease=1)
    clock.advance(1)
    second = await _claim(store, "k", "o2", lease=1)
    assert first < second
    assert await store.release("k", owner="o2", fence=second)
    assert second < await _claim(store, "k", "o3")


async def test_a_stale_fence_is_refused(store: MemoryStore, clock: ManualClock) -> None:
    """The same owner with an old fence can neither complete nor release."""
    old = await _claim(store, "k", "o", lease=1)
    clock.advance(1)
    new = await _claim(store, "k", "o", lease=5)
    record = IdempotencyRecord("late")
    assert not await store.complete("k", owner="o", fence=old, record=record, ttl=5)
    assert not await store.release("k", owner="o", fence=old)
    assert await store.release("k", owner="o", fence=new)


async def test_running_claim_is_reported_with_its_lease(
    store: MemoryStore, clock: ManualClock
) -> None:
    """A second owner sees the claim in progress, its fingerprint and lease left."""
    await store.claim("k", owner="o1", lease=10, fingerprint="f1")
    clock.advance(4)
    found = await store.claim("k", owner="o2", lease=10, fingerprint="f2")
    assert ClaimResult("in_progress", None, "f1", 6.0) == found
    assert await store.get("k") is None


async def test_only_the_owner_completes_or_releases(store: MemoryStore) -> None:
    """Another owner's complete or release is refused and changes nothing."""
    fence = await _claim(store, "k", "o1")
    one = IdempotencyRecord(1)
    assert not await store.complete("k", owner="o2", fence=fence, record=one, ttl=5)
    assert not await store.release("k", owner="o2", fence=fence)
    found = await store.claim("k", owner="o2", lease=1, fingerprint=None)
    assert found.status == "in_progress"
    assert await store.release("k", owner="o1", fence=fence)
    assert not await store.release("k", owner="o1", fence=fence)
    assert not await store.complete("k", owner="o1", fence=fence, record=one, ttl=5)
    await _claim(store, "k", "o2", lease=1)


async def test_expired_lease_is_taken_over(
    store: MemoryStore, clock: ManualClock
) -> None:
    """After the lease a new owner claims the key; the old one can no longer record."""
    crashed = await _claim(store, "k", "crashed")
    clock.advance(10)
    fence = await _claim(store, "k", "o2")
    late = IdempotencyRecord("late")
    assert not await store.complete(
        "k", owner="crashed", fence=crashed, record=late, ttl=5
    )
    new = IdempotencyRecord("new")
    assert await store.complete("k", owner="o2", fence=fence, record=new, ttl=5)
    assert new == await store.get("k")


async def test_record_expires_after_ttl(store: MemoryStore, clock: ManualClock) -> None:
    """A record lives ``ttl`` seconds by the store's clock, then the key is free."""
    await _complete(store, "k", 1, ttl=30)
    clock.advance(29.5)
    found = await store.claim("k", owner="x", lease=1, fingerprint=None)
    assert found.status == "completed"
    clock.advance(0.5)
    assert await store.get("k") is None
    await _complete(store, "j", 2, ttl=30)
    clock.advance(30)
    await _claim(store, "j", "o2", lease=1)


async def test_lru_evicts_least_recently_used_records(store: MemoryStore) -> None:
    """Past max_entries the least recently used record goes; a hit counts as a use."""
    for key in "abc":
        await _complete(store, key, key)
    await store.claim("a", owner="x", lease=1, fingerprint=None)  # a hit: a is fresh
    await _complete(store, "d", "d")
    assert await store.get("b") is None
    assert len(store) == 3
    assert await store.get("c") is not None  # c is used now; a is the oldest
    await _complete(store, "e", "e")
    assert await store.get("a") is None
    assert [k for k in "abcde" if store.get_now(k) is not None] == ["c", "d", "e"]


async def test_lru_never_evicts_running_claims(store: MemoryStore) -> None:
    """Claims are running work: they stay even when they alone exceed the bound."""
    await _complete(store, "done", 1)
    for n in range(5):
        await _claim(store, f"run{n}", "o", lease=9)
    assert await store.get("done") is None
    assert len(store) == 5
    for n in range(5):
        found = await store.claim(f"run{n}", owner="p", lease=9, fingerprint=None)
        assert found.status == "in_progress"


async def test_forget_and_clear(store: MemoryStore) -> None:
    """forget drops one key, record or claim; clear drops everything."""
    await _complete(store, "a", 1)
    await _claim(store, "b", "o", lease=9)
    await store.forget("a")
    await store.forget("b")
    await store.forget("never-seen")
    assert len(store) == 0
    await _claim(store, "b", "p", lease=9)
    await _complete(store, "c", 3)
    store.clear()
    assert len(store) == 0
    assert await store.get("c") is None


async def test_wait_returns_when_the_claim_lands(store: MemoryStore) -> None:
    """wait returns at once on a free key, and when a running claim is released."""
    with anyio.fail_after(5):
        await store.wait("free", timeout=60)
    fence = await _claim(store, "k", "o", lease=60)
    done = anyio.Event()

    async def waiter() -> None:
        await store.wait("k", timeout=60)
        done.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(waiter)
            while board.waiting(store, "k") == 0:
                await anyio.sleep(0)
            assert not done.is_set()
            assert await store.release("k", owner="o", fence=fence)
    assert done.is_set()


async def test_wait_gives_up_after_its_timeout(store: MemoryStore) -> None:
    """A wait on a claim nobody lands ends after ``timeout`` and leaves the board."""
    await _claim(store, "k", "o", lease=60)
    with anyio.fail_after(5):
        await store.wait("k", timeout=0.01)
    assert board.waiting(store, "k") == 0


def test_claims_race_across_threads() -> None:
    """Of many threads claiming one key at once, exactly one gets it."""
    store = MemoryStore()
    start = threading.Barrier(16)
    results: list[str] = []

    def claim(n: int) -> None:
        start.wait()
        results.append(
            store.claim_now("k", owner=str(n), lease=60, fingerprint=None).status
        )

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == ["claimed"] + ["in_progress"] * 15


def test_max_entries_property_and_defaults() -> None:
    """The bound is readable and defaults to 10,000."""
    assert MemoryStore().max_entries == 10_000
    assert MemoryStore(max_entries=1).max_entries == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_entries": 0}, ValueError, "at least 1"),
        ({"max_entries": 2.5}, TypeError, "must be an int"),
        ({"max_entries": True}, TypeError, "must be an int"),
        ({"clock": 3}, TypeError, "clock=...\\) must be callable"),
    ],
)
def test_bad_construction_is_refused(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """Bad options fail at construction with a message naming the option."""
    with pytest.raises(error, match=match):
        MemoryStore(**kwargs)  # type: ignore[arg-type]


def test_manual_clock_moves_only_forward() -> None:
    """ManualClock starts where told, advances on demand, and refuses to go back."""
    clock = ManualClock(start=5)
    assert clock() == 5.0
    clock.advance(timedelta(minutes=1).total_seconds())
    assert clock() == 65.0
    clock.advance(0)
    assert clock() == 65.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="only moves forward"):
            clock.advance(bad)


@pytest.mark.parametrize("gil", [True, False], ids=["lock-free", "locked"])
async def test_hits_expiry_and_lru_agree_with_and_without_the_gil(
    gil: bool, store: MemoryStore, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """get_now's lock-free path (GIL) and its locked twin give the same answers."""
    from bgtasks._idempotency import stores

    monkeypatch.setattr(stores, "_GIL", gil)
    for key in "abc":
        await _complete(store, key, key, ttl=10 if key == "a" else 60)
    assert store.get_now("x") is None
    record = store.get_now("b")
    assert record is not None
    assert record.value == "b"
    await _complete(store, "d", "d")  # b was used: a is the oldest and goes
    assert [k for k in "abcd" if store.get_now(k) is not None] == ["b", "c", "d"]
    clock.advance(60)
    assert store.get_now("b") is None
    assert len(store) == 2  # the expired record was dropped when touched


def test_lock_free_hits_survive_concurrent_forgets_and_evictions() -> None:
    """Threads hitting keys that others forget and evict never see an error."""
    store = MemoryStore(max_entries=8)
    errors: list[BaseException] = []
    stop = threading.Event()

    def churn() -> None:
        n = 0
        while not stop.is_set():
            key = f"k{n % 16}"
            found = store.claim_now(key, owner="o", lease=5, fingerprint=None)
            if found.status == "claimed":
                store.complete_now(
                    key,
                    owner="o",
                    fence=found.fence,
                    record=IdempotencyRecord(n),
                    ttl=60,
                )
            if n % 3 == 0:
                store.forget_now(f"k{(n + 5) % 16}")
            n += 1

    def hit() -> None:
        try:
            for n in range(20_000):
                store.get_now(f"k{n % 16}")
        except BaseException as exc:  # pragma: no cover - the failure reported
            errors.append(exc)

    writer = threading.Thread(target=churn)
    readers = [threading.Thread(target=hit) for _ in range(3)]
    writer.start()
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    stop.set()
    writer.join()
    assert errors == []
