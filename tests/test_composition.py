"""``logged``, ``retry``, ``timeout`` and ``idempotent`` stack in any order."""

from __future__ import annotations

import inspect
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from trio.testing import MockClock

from bgtasks import (
    MemoryStore,
    checkpoint,
    idempotent,
    logged,
    remaining,
    retry,
    timeout,
)
from bgtasks.testing import instant_retries

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]
NAMES = ("logged", "idempotent", "retry", "timeout")
ORDERS = list(itertools.permutations(NAMES))
ORDER_IDS = [">".join(order) for order in ORDERS]


def _decorators(store: MemoryStore) -> dict[str, Decorator]:
    return {
        "logged": logged,
        "idempotent": idempotent(key="welcome:{email}", store=store),
        "retry": retry(on=ConnectionError, attempts=3),
        "timeout": timeout(30),
    }


def _stack(func: Callable[..., Any], order: tuple[str, ...]) -> Callable[..., Any]:
    """Apply the decorators so that ``order[0]`` is the outermost, as written."""
    decorators = _decorators(MemoryStore())
    for name in reversed(order):
        func = decorators[name](func)
    return func


def _outcomes(records: list[logging.LogRecord]) -> list[tuple[int, str]]:
    """(attempt, outcome) of the end records that ``@logged`` wrote."""
    return [
        (vars(r)["attempt"], vars(r)["outcome"])
        for r in records
        if "outcome" in vars(r)
    ]


@pytest.mark.parametrize("order", ORDERS, ids=ORDER_IDS)
def test_every_order_works_on_def(order: tuple[str, ...]) -> None:
    """Sync: retried once, recorded once, answered from the store the second time."""
    calls: list[str] = []

    def send_welcome_email(email: str) -> str:
        """Send the welcome email."""
        checkpoint()
        calls.append(email)
        if len(calls) == 1:
            raise ConnectionError("SMTP down")
        return f"sent to {email}"

    task = _stack(send_welcome_email, order)
    assert not inspect.iscoroutinefunction(task)
    assert task.__doc__ == "Send the welcome email."
    with instant_retries():
        assert task("ada@example.com") == "sent to ada@example.com"
        assert task("ada@example.com") == "sent to ada@example.com"
    assert calls == ["ada@example.com", "ada@example.com"]


@pytest.mark.parametrize("order", ORDERS, ids=ORDER_IDS)
@pytest.mark.anyio
async def test_every_order_works_on_async_def(order: tuple[str, ...]) -> None:
    """Async: retried once, recorded once, answered from the store the second time."""
    calls: list[str] = []

    async def send_welcome_email(email: str) -> str:
        """Send the welcome email."""
        await anyio.sleep(0)
        calls.append(email)
        if len(calls) == 1:
            raise ConnectionError("SMTP down")
        return f"sent to {email}"

    task = _stack(send_welcome_email, order)
    assert inspect.iscoroutinefunction(task)
    assert task.__doc__ == "Send the welcome email."
    with instant_retries():
        assert await task("ada@example.com") == "sent to ada@example.com"
        assert await task("ada@example.com") == "sent to ada@example.com"
    assert calls == ["ada@example.com", "ada@example.com"]


class TestRetryAndTimeout:
    """The order of retry and timeout decides what the deadline bounds."""

    @pytest.fixture(
        params=[
            pytest.param("asyncio", id="asyncio"),
            pytest.param("trio-mockclock", id="trio-mockclock"),
        ]
    )
    def anyio_backend(self, request: pytest.FixtureRequest) -> object:
        """Asyncio with tiny real delays; trio with an instant MockClock."""
        if request.param == "asyncio":
            return "asyncio"
        return ("trio", {"clock": MockClock(autojump_threshold=0)})

    @pytest.fixture
    def limit(self, anyio_backend: object) -> float:
        """A timeout that is long on the virtual clock and short on the real one."""
        return 0.02 if anyio_backend == "asyncio" else 5.0

    @pytest.mark.anyio
    async def test_retry_above_timeout_gives_each_attempt_its_deadline(
        self, limit: float
    ) -> None:
        """A timed-out attempt is retried, and the next attempt has a fresh deadline."""
        seen: list[float | None] = []

        @retry(on=TimeoutError, attempts=3)
        @timeout(limit)
        async def generate_report() -> str:
            seen.append(remaining())
            if len(seen) == 1:
                await anyio.sleep_forever()
            return "report"

        with instant_retries() as recorder:
            assert await generate_report() == "report"
        assert recorder.attempts == [1]
        assert isinstance(recorder.events[0].exception, TimeoutError)
        assert 0 < (seen[1] or 0) <= limit
        if limit == 5.0:  # the virtual clock is exact: a whole new 5 s
            assert seen == [5.0, 5.0]

    @pytest.mark.anyio
    async def test_timeout_above_retry_bounds_attempts_and_waits(
        self, limit: float
    ) -> None:
        """The outer deadline cancels the retry loop, waits included."""
        calls: list[int] = []

        @timeout(limit)
        @retry(on=ConnectionError, attempts=1000, backoff=limit / 4)
        async def sync_contacts() -> None:
            calls.append(1)
            raise ConnectionError("CRM down")

        with pytest.raises(TimeoutError, match=r"sync_contacts timed out after"):
            await sync_contacts()
        assert 1 <= len(calls) <= 10


def test_sync_retry_above_timeout_retries_a_timed_out_attempt() -> None:
    """Sync: an attempt stopped by checkpoint() is retried with a fresh deadline."""
    seen: list[float | None] = []

    @retry(on=TimeoutError, attempts=3)
    @timeout(0.01)
    def export_rows() -> str:
        seen.append(remaining())
        if len(seen) == 1:
            time.sleep(0.03)
            checkpoint()  # raises: this attempt is past its deadline
        return "exported"

    with instant_retries() as recorder:
        assert export_rows() == "exported"
    assert recorder.attempts == [1]
    assert 0 < (seen[1] or 0) <= 0.01


def test_sync_timeout_above_retry_stops_at_the_next_checkpoint() -> None:
    """Sync: past the outer deadline, the next attempt's checkpoint() ends it all."""
    calls: list[int] = []

    @timeout(0.02)
    @retry(on=ConnectionError, attempts=1000, backoff=0.005)
    def sync_contacts() -> None:
        checkpoint()
        calls.append(1)
        raise ConnectionError("CRM down")

    with pytest.raises(TimeoutError, match="sync_contacts passed the deadline"):
        sync_contacts()
    assert 1 <= len(calls) < 1000


@pytest.mark.anyio
async def test_logged_inside_retry_logs_each_attempt(
    records: list[logging.LogRecord],
) -> None:
    """Below retry, logged writes one record per attempt, with its number."""
    calls: list[int] = []

    @retry(on=ConnectionError, attempts=3)
    @logged
    async def send() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("SMTP down")
        return "sent"

    with instant_retries():
        assert await send() == "sent"
    assert _outcomes(records) == [(1, "failed"), (2, "failed"), (3, "succeeded")]


@pytest.mark.anyio
async def test_logged_above_retry_logs_the_call_once(
    records: list[logging.LogRecord],
) -> None:
    """Above retry, logged writes one start and one end record for the whole call."""
    calls: list[int] = []

    @logged
    @retry(on=ConnectionError, attempts=3)
    async def send() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("SMTP down")
        return "sent"

    with instant_retries():
        assert await send() == "sent"
    from_logged = [r for r in records if r.pathname.endswith("_logged.py")]
    assert len(from_logged) == 2  # one start, one end; retry logs its own retries
    assert _outcomes(records) == [(1, "succeeded")]


@pytest.mark.anyio
async def test_timeout_around_logged_shows_as_cancelled(
    records: list[logging.LogRecord],
) -> None:
    """Inside a timeout, logged sees the cancellation; outside, the TimeoutError."""

    @timeout(0.01)
    @logged
    async def inner_logged() -> None:
        await anyio.sleep_forever()

    @logged
    @timeout(0.01)
    async def outer_logged() -> None:
        await anyio.sleep_forever()

    for task in (inner_logged, outer_logged):
        with pytest.raises(TimeoutError):
            await task()
    assert _outcomes(records) == [(1, "cancelled"), (1, "failed")]
