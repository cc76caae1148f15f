"""Argument fingerprints: equal calls agree, different arguments never collide."""

from __future__ import annotations

import hashlib
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bgtasks import MemoryStore, idempotent
from bgtasks._idempotency.keys import make_fingerprint
from bgtasks._idempotency.stores import ClaimResult, IdempotencyRecord
from bgtasks.exceptions import IdempotencyConflictError


def task(a: object, b: object = None, /, *, c: object = "x") -> None:
    """The signature fingerprinted below."""


def pair(a: object, b: object = 0) -> None:
    """Two positional-or-keyword parameters, one defaulted."""


IN_PROCESS = make_fingerprint(pair, None, "pair", in_process=True)
STABLE = make_fingerprint(pair, None, "pair")

atomic: st.SearchStrategy[object] = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(), st.binary()
)
values = st.recursive(atomic, lambda inner: st.tuples(inner, inner), max_leaves=6)


def same(x: object, y: object) -> bool:
    """The same argument: same type and value, -0.0 apart from 0.0, nan as nan."""
    if type(x) is not type(y):
        return False
    if isinstance(x, tuple):
        assert isinstance(y, tuple)
        return len(x) == len(y) and all(map(same, x, y))
    if isinstance(x, float):
        assert isinstance(y, float)
        if math.isnan(x) or math.isnan(y):
            return math.isnan(x) and math.isnan(y)
        return x == y and math.copysign(1, x) == math.copysign(1, y)
    return x == y


def old_digest(func: Callable[..., object], *args: object, **kwargs: object) -> str:
    """The fingerprint as earlier versions wrote it (what RedisStore holds)."""
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    text = repr(tuple(bound.arguments.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@given(x=values, y=values)
def test_fingerprints_differ_exactly_when_arguments_differ(x: Any, y: Any) -> None:
    """Both forms: fp(x) == fp(y) if and only if x and y are the same argument."""
    expected = same(x, y)
    assert (IN_PROCESS((x,), {}) == IN_PROCESS((y,), {})) is expected
    assert (STABLE((x,), {}) == STABLE((y,), {})) is expected


@given(x=values, y=values)
def test_positional_keyword_and_default_calls_agree(x: Any, y: Any) -> None:
    """However the same arguments are passed, the fingerprint is the same."""
    for fp in (IN_PROCESS, STABLE):
        assert fp((x, y), {}) == fp((x,), {"b": y}) == fp((), {"a": x, "b": y})
        assert fp((x,), {}) == fp((x, 0), {})


def test_look_alike_values_are_told_apart() -> None:
    """1, 1.0, True, "1", b"1", (1,), None, 0.0 and -0.0 are all different."""
    look_alikes: list[object] = [1, 1.0, True, "1", b"1", (1,), None, 0.0, -0.0]
    for fp in (IN_PROCESS, STABLE):
        prints = [fp((value,), {}) for value in look_alikes]
        assert len(set(prints)) == len(look_alikes)
        assert fp((math.nan,), {}) == fp((math.nan,), {})


def test_other_arguments_and_long_ones_are_digested() -> None:
    """Lists, dicts, subclasses and long reprs give a 32-hex digest, still exact."""
    for value in ([1], {"k": 1}, "x" * 500, (True, 2.5, "y" * 200)):
        text = IN_PROCESS((value,), {})
        assert len(text) == 32
        assert int(text, 16) >= 0
        assert text == old_digest(pair, value)
    assert IN_PROCESS(([1],), {}) != IN_PROCESS(([2],), {})
    assert IN_PROCESS((1,), {}) == "a,b=(1, 0)"


def test_the_stable_form_is_the_format_earlier_versions_wrote() -> None:
    """Without in_process, every call gets the digest RedisStore entries hold."""
    fp = make_fingerprint(task, None, "task")
    assert fp((1,), {}) == old_digest(task, 1)
    assert fp((1, 2), {"c": "y"}) == old_digest(task, 1, 2, c="y")
    with pytest.raises(TypeError, match="cannot fingerprint"):
        fp((1,), {"a": 1})


class AsyncOnlyStore:
    """A shared store as the decorator sees one: async methods only."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.fingerprints: list[str | None] = []

    async def claim(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Claim in the inner store; remember the fingerprint sent."""
        self.fingerprints.append(fingerprint)
        return await self.inner.claim(
            key, owner=owner, lease=lease, fingerprint=fingerprint
        )

    async def complete(
        self, key: str, *, owner: str, fence: int, record: IdempotencyRecord, ttl: float
    ) -> bool:
        """Complete in the inner store."""
        return await self.inner.complete(
            key, owner=owner, fence=fence, record=record, ttl=ttl
        )

    async def release(self, key: str, *, owner: str, fence: int) -> bool:
        """Release in the inner store."""
        return await self.inner.release(key, owner=owner, fence=fence)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Read the inner store."""
        return await self.inner.get(key)

    async def forget(self, key: str) -> None:
        """Forget in the inner store."""
        await self.inner.forget(key)

    async def wait(self, key: str, *, timeout: float) -> None:
        """Wait on the inner store."""
        await self.inner.wait(key, timeout=timeout)


@pytest.mark.anyio
async def test_a_shared_store_gets_the_stable_digest_and_reads_old_records() -> None:
    """A record written by an earlier version replays; a different one conflicts."""
    store = AsyncOnlyStore()

    @idempotent(key="order:{order}", namespace="o", store=store, fingerprint=True)
    async def charge(order: int, amount: int) -> str:
        return f"charged {amount}"

    # As an earlier version left it: the same digest format, a recorded result.
    old = old_digest(charge, 1, 10)
    claim = await store.inner.claim("o:order:1", owner="old", lease=5, fingerprint=old)
    record = IdempotencyRecord("charged by the old version", None, old)
    await store.inner.complete(
        "o:order:1", owner="old", fence=claim.fence, record=record, ttl=60
    )
    assert await charge(1, 10) == "charged by the old version"
    assert store.fingerprints == [old]
    with pytest.raises(IdempotencyConflictError):
        await charge(1, 99)
