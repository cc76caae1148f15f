"""Checked by mypy and pyright, never run: RedisStore's API as users call it.

Each ``type: ignore`` must be needed (mypy's warn_unused_ignores, and
pyright's setting below).
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import coredis
from typing_extensions import assert_type

from bgtasks import ClaimResult, IdempotencyRecord, IdempotencyStore, idempotent
from bgtasks.exceptions import RecordedError
from bgtasks.redis import JSONSerializer, RedisStore

store = RedisStore.from_url("redis://localhost", prefix="shop", timeout=0.5)
assert_type(store, RedisStore)
RedisStore.from_url("redis://localhost", serializer=JSONSerializer())
RedisStore(coredis.Redis.from_url("redis://localhost"), prefix="shop")
RedisStore.from_url("redis://localhost", timeout="2")  # type: ignore[arg-type]


class NoLoads:
    def dumps(self, obj: object, /) -> bytes:
        return b""


RedisStore.from_url("redis://localhost", serializer=NoLoads())  # type: ignore[arg-type]


async def use() -> None:
    found = await store.claim("k", owner="o", lease=5.0, fingerprint=None)
    assert_type(found, ClaimResult)
    assert_type(found.fence, int)
    record = IdempotencyRecord(1, None, None)
    ok = await store.complete("k", owner="o", fence=found.fence, record=record, ttl=9)
    assert_type(ok, bool)
    assert_type(await store.release("k", owner="o", fence=1), bool)
    assert_type(await store.get("k"), IdempotencyRecord | None)
    assert_type(await store.forget("k"), None)
    assert_type(await store.wait("k", timeout=1.0), None)
    await store.claim("k", owner="o", lease=5.0)  # type: ignore[call-arg]
    await store.aclose()
    error = RecordedError("m.E", "boom", ("boom",))
    assert_type(error.resolve((ValueError,)), Exception)


shared: IdempotencyStore = store  # RedisStore implements the public protocol


@idempotent(key="charge:{order}", store=store, on_store_error="run")
async def charge(order: str) -> int:
    return 1


async def use_charge() -> None:
    assert_type(await charge("o1"), int)
