"""MemoryStore keeps claims and records atomically, bounded, expiring by its clock."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from bgtasks import IdempotencyStore, MemoryStore
from bgtasks._clock import ManualClock
from bgtasks._idempotency.stores import CLAIMED, ClaimResult, IdempotencyRecord


@pytest.fixture
def clock() -> ManualClock:
    """A clock the test moves by hand."""
    return ManualClock()


@pytest.fixture
def store(clock: ManualClock) -> MemoryStore:
    """A small store on the manual clock."""
    return MemoryStore(max_entries=3, clock=clock)


def _complete(store: MemoryStore, key: str, value: object, ttl: float = 60.0) -> None:
    assert store.claim(key, owner="o", lease=10.0, fingerprint=None) == CLAIMED
    assert store.complete(key, owner="o", record=IdempotencyRecord(value), ttl=ttl)


def test_memory_store_implements_the_protocol() -> None:
    """MemoryStore passes the runtime check ``@idempotent(store=...)`` makes."""
    assert isinstance(MemoryStore(), IdempotencyStore)
    assert not isinstance(object(), IdempotencyStore)


def test_claim_complete_and_replay(store: MemoryStore) -> None:
    """A completed key reports its record, the very same value object, every time."""
    value = ("a", 1)
    assert store.claim("k", owner="o1", lease=5, fingerprint="f") == CLAIMED
    record = IdempotencyRecord(value, None, "f")
    assert store.complete("k", owner="o1", record=record, ttl=60)
    found = store.claim("k", owner="o2", lease=5, fingerprint="f")
    assert found.status == "completed"
    assert found.record is record
    assert found.fingerprint == "f"
    assert store.claim("k", owner="o3", lease=5, fingerprint=None) is found
    got = store.get("k")
    assert got is not None
    assert got.value is value


def test_running_claim_is_reported_with_its_lease(
    store: MemoryStore, clock: ManualClock
) -> None:
    """A second owner sees the claim in progress, its fingerprint and lease left."""
    store.claim("k", owner="o1", lease=10, fingerprint="f1")
    clock.advance(4)
    found = store.claim("k", owner="o2", lease=10, fingerprint="f2")
    assert ClaimResult("in_progress", None, "f1", 6.0) == found
    assert store.get("k") is None


def test_only_the_owner_completes_or_releases(store: MemoryStore) -> None:
    """Another owner's complete or release is refused and changes nothing."""
    store.claim("k", owner="o1", lease=10, fingerprint=None)
    assert not store.complete("k", owner="o2", record=IdempotencyRecord(1), ttl=5)
    assert not store.release("k", owner="o2")
    assert (
        store.claim("k", owner="o2", lease=1, fingerprint=None).status == "in_progress"
    )
    assert store.release("k", owner="o1")
    assert not store.release("k", owner="o1")
    assert not store.complete("k", owner="o1", record=IdempotencyRecord(1), ttl=5)
    assert store.claim("k", owner="o2", lease=1, fingerprint=None) == CLAIMED


def test_expired_lease_is_taken_over(store: MemoryStore, clock: ManualClock) -> None:
    """After the lease a new owner claims the key; the old one can no longer record."""
    store.claim("k", owner="crashed", lease=10, fingerprint=None)
    clock.advance(10)
    assert store.claim("k", owner="o2", lease=10, fingerprint=None) == CLAIMED
    late = IdempotencyRecord("late")
    assert not store.complete("k", owner="crashed", record=late, ttl=5)
    assert store.complete("k", owner="o2", record=IdempotencyRecord("new"), ttl=5)
    assert IdempotencyRecord("new") == store.get("k")


def test_record_expires_after_ttl(store: MemoryStore, clock: ManualClock) -> None:
    """A record lives ``ttl`` seconds by the store's clock, then the key is free."""
    _complete(store, "k", 1, ttl=30)
    clock.advance(29.5)
    assert store.claim("k", owner="x", lease=1, fingerprint=None).status == "completed"
    clock.advance(0.5)
    assert store.get("k") is None
    _complete(store, "j", 2, ttl=30)
    clock.advance(30)
    assert store.claim("j", owner="o2", lease=1, fingerprint=None) == CLAIMED


def test_lru_evicts_least_recently_used_records(store: MemoryStore) -> None:
    """Past max_entries the least recently used record goes; a hit counts as a use."""
    for key in "abc":
        _complete(store, key, key)
    store.claim("a", owner="x", lease=1, fingerprint=None)  # a hit: a is fresh now
    _complete(store, "d", "d")
    assert store.get("b") is None
    assert len(store) == 3
    assert store.get("c") is not None  # c is used now; a is the oldest
    _complete(store, "e", "e")
    assert store.get("a") is None
    assert [k for k in "abcde" if store.get(k) is not None] == ["c", "d", "e"]


def test_lru_never_evicts_running_claims(store: MemoryStore) -> None:
    """Claims are running work: they stay even when they alone exceed the bound."""
    _complete(store, "done", 1)
    for n in range(5):
        assert store.claim(f"run{n}", owner="o", lease=9, fingerprint=None) == CLAIMED
    assert store.get("done") is None
    assert len(store) == 5
    for n in range(5):
        found = store.claim(f"run{n}", owner="p", lease=9, fingerprint=None)
        assert found.status == "in_progress"


def test_forget_and_clear(store: MemoryStore) -> None:
    """forget drops one key, record or claim; clear drops everything."""
    _complete(store, "a", 1)
    store.claim("b", owner="o", lease=9, fingerprint=None)
    store.forget("a")
    store.forget("b")
    store.forget("never-seen")
    assert len(store) == 0
    assert store.claim("b", owner="p", lease=9, fingerprint=None) == CLAIMED
    _complete(store, "c", 3)
    store.clear()
    assert len(store) == 0
    assert store.get("c") is None


def test_claims_race_across_threads() -> None:
    """Of many threads claiming one key at once, exactly one gets it."""
    store = MemoryStore()
    start = threading.Barrier(16)
    results: list[str] = []

    def claim(n: int) -> None:
        start.wait()
        results.append(
            store.claim("k", owner=str(n), lease=60, fingerprint=None).status
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
