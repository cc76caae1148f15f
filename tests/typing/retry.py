"""Checked by mypy and pyright, never run: retry and backoff keep users' types.

A decorated ``async def f(x: int) -> str`` must still be ``(x: int) ->
Coroutine[Any, Any, str]``: the Protocol assignments check the parameter names
and types, ``assert_type`` the awaited results, and each ``type: ignore`` must
be needed (mypy's warn_unused_ignores, and pyright's setting below).
"""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

import random
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, Protocol

from typing_extensions import assert_type

from bgtasks import RetryEvent, backoff, retry
from bgtasks.testing import RetryRecorder, instant_retries


class AsyncIntToStr(Protocol):
    def __call__(self, x: int) -> Coroutine[Any, Any, str]: ...


class SyncIntToStr(Protocol):
    def __call__(self, x: int) -> str: ...


@retry()
async def fetch_name(x: int) -> str:
    return str(x)


@retry(on=(ConnectionError, TimeoutError), attempts=5, backoff=backoff.fixed(1))
def format_name(x: int) -> str:
    return str(x)


async_view: AsyncIntToStr = fetch_name
sync_view: SyncIntToStr = format_name
assert_type(format_name(1), str)
format_name("1")  # type: ignore[arg-type]
format_name(y=1)  # type: ignore[call-arg]


def is_transient(exc: Exception) -> bool:
    return isinstance(exc, OSError)


def log_retry(event: RetryEvent) -> None:
    assert_type(event.name, str)
    assert_type(event.attempt, int)
    assert_type(event.exception, Exception | None)
    assert_type(event.delay, float)
    assert_type(event.elapsed, float)


async def alog_retry(event: RetryEvent) -> None: ...


@retry(
    on=is_transient,
    backoff=lambda attempt: 0.5 * attempt,
    deadline=timedelta(seconds=30),
    retry_if=lambda result: result is None,
    on_retry=alog_retry,
)
async def fetch(url: str, *, timeout: float = 5.0) -> bytes | None:
    return None


@retry(backoff=2.5, deadline=10.0, on_retry=log_retry, attempts=4)
def compute(x: int) -> int:
    return x


async def use_async() -> None:
    assert_type(await fetch_name(1), str)
    assert_type(await fetch("https://example.com", timeout=1.0), bytes | None)
    await fetch_name("1")  # type: ignore[arg-type]
    await fetch("u", retries=3)  # type: ignore[call-arg]


assert_type(compute(1), int)
assert_type(retry(attempts=2)(compute)(3), int)

assert_type(backoff.fixed(1.0), backoff.Backoff)
assert_type(backoff.linear(1.0, 0.5, maximum=5.0), backoff.Backoff)
assert_type(
    backoff.exponential(
        initial=0.1, maximum=10.0, jitter="equal", rng=random.Random(1)
    ),
    backoff.Backoff,
)
assert_type(backoff.exponential()(3), float)
backoff.exponential(jitter="half")  # type: ignore[arg-type]

with instant_retries(jitter=True) as recorder:
    assert_type(recorder, RetryRecorder)
    assert_type(recorder.events, list[RetryEvent])
    assert_type(recorder.delays, list[float])


@retry  # type: ignore[arg-type]
def bare(x: int) -> int:
    return x
