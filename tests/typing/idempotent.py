"""Checked by mypy and pyright, never run: @idempotent keeps users' types.

A decorated function keeps its parameters and return type; with
``on_duplicate="skip"`` a duplicate returns ``None`` at once, so the return type
becomes ``T | None`` (for ``async def``: a coroutine of ``T | None``). Each
``type: ignore`` must be needed (mypy's warn_unused_ignores, and pyright's
setting below).
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, Protocol

from typing_extensions import assert_type

from bgtasks import IdempotencyStore, MemoryStore, idempotent


class AsyncIntToStr(Protocol):
    def __call__(self, x: int) -> Coroutine[Any, Any, str]: ...


class SyncIntToStr(Protocol):
    def __call__(self, x: int) -> str: ...


class SyncIntToOptionalStr(Protocol):
    def __call__(self, x: int) -> str | None: ...


store = MemoryStore(max_entries=100)
shared: IdempotencyStore = store


@idempotent(key="name:{x}")
async def fetch_name(x: int) -> str:
    return str(x)


def format_key(x: int) -> str:
    return f"format:{x}"


# Strict pyright wants typed key functions: a def, rather than an untyped lambda.
@idempotent(key=format_key, on_duplicate="raise", store=shared)
def format_name(x: int) -> str:
    return str(x)


@idempotent(
    key="charge:{order_id}",
    ttl=timedelta(days=1),
    lease=30,
    wait_timeout=5.0,
    namespace="billing.charge",
    fingerprint=True,
    record_errors=(ValueError, KeyError),
)
def charge(order_id: str, amount: int, *, currency: str = "EUR") -> tuple[str, int]:
    return (order_id, amount)


@idempotent(key="{x}", on_duplicate="skip")
async def maybe_fetch(x: int) -> str:
    return str(x)


@idempotent(key="{x}", on_duplicate="skip", record_errors=KeyError)
def maybe_format(x: int) -> str:
    return str(x)


async_view: AsyncIntToStr = fetch_name
sync_view: SyncIntToStr = format_name
skip_view: SyncIntToOptionalStr = maybe_format
assert_type(format_name(1), str)
assert_type(charge("o1", 5, currency="USD"), tuple[str, int])
assert_type(maybe_format(1), str | None)
format_name("1")  # type: ignore[arg-type]
charge("o1")  # type: ignore[call-arg]
bad_view: SyncIntToStr = maybe_format  # type: ignore[assignment]


async def use_async() -> None:
    assert_type(await fetch_name(1), str)
    assert_type(await maybe_fetch(1), str | None)
    await fetch_name("1")  # type: ignore[arg-type]


def use_store() -> None:
    record = store.get_now("billing.charge:o1")
    if record is not None:
        assert_type(record.value, object)
        assert_type(record.error, Exception | None)
    store.forget_now("billing.charge:o1")
    store.clear()
    assert_type(len(store), int)


# Options are checked as users write them.
idempotent(key="k", on_duplicate="ignore")  # type: ignore[call-overload]
idempotent(key="k", on_duplicate="skip", wait_timeout=1.0)  # type: ignore[call-overload]
idempotent(key=3)  # type: ignore[call-overload]
