"""Checked by mypy and pyright, never run: RedisStore's API as users call it.

Each ``type: ignore`` must be needed (mypy's warn_unused_ignores, and
pyright's setting below).
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import coredis
from typing_extensions import assert_type

from bgtasks._idempotency.stores import IdempotencyRecord
from bgtasks._redis._store import FencedClaim
from bgtasks.redis import JSONSerializer, RecordedError, RedisStore

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
    assert_type(found, FencedClaim)
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
