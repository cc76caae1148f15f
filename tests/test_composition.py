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
from bgtasks._context import outcome_var
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


# --- logged above idempotent: a duplicate logs what it did --------------------


def _end_records(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    """(outcome, message) of each end record of ``logged``."""
    return [
        (vars(r)["outcome"], r.getMessage())
        for r in records
        if "outcome" in vars(r) and "duration" in vars(r)
    ]


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.anyio
async def test_a_replayed_duplicate_logs_as_replayed(
    is_async: bool, records: list[logging.LogRecord]
) -> None:
    """The first call logs "succeeded", its duplicate "replayed", message and field."""
    store = MemoryStore()
    calls: list[str] = []

    def body(email: str) -> str:
        calls.append(email)
        return "sent"

    async def abody(email: str) -> str:
        return body(email)

    send = logged(
        idempotent(key="welcome:{email}", store=store)(abody if is_async else body)
    )
    for _ in range(2):
        result: Any = send("a@example.com")
        assert (await result if is_async else result) == "sent"
    name = "abody" if is_async else "body"
    assert calls == ["a@example.com"]
    assert [
        (outcome, message.split(" in ")[0].rsplit(".", 1)[-1])
        for outcome, message in _end_records(records)
    ] == [
        ("succeeded", f"{name} succeeded"),
        ("replayed", f"{name} replayed the recorded result of its idempotency key"),
    ]


@pytest.mark.anyio
async def test_a_waiting_and_a_skipped_duplicate_log_as_such(
    records: list[logging.LogRecord],
) -> None:
    """A duplicate that waited logs "waited"; with on_duplicate="skip", "skipped"."""
    store = MemoryStore()
    started, release = anyio.Event(), anyio.Event()

    async def send(email: str) -> str:
        started.set()
        await release.wait()
        return "sent"

    waiting = logged(idempotent(key="{email}", store=store, namespace="w")(send))
    skipping = logged(
        idempotent(key="{email}", store=store, namespace="w", on_duplicate="skip")(send)
    )
    results: list[str | None] = []
    async with anyio.create_task_group() as tg:

        async def call(f: Callable[[str], Any]) -> None:
            results.append(await f("a@example.com"))

        tg.start_soon(call, waiting)
        await started.wait()
        tg.start_soon(call, waiting)
        await call(skipping)
        await anyio.sleep(0.01)  # let the second caller start waiting
        release.set()
    assert results == [None, "sent", "sent"]
    assert sorted(outcome for outcome, _ in _end_records(records)) == [
        "skipped",
        "succeeded",
        "waited",
    ]
    messages = dict(_end_records(records))
    assert (
        "send waited for the running call of its idempotency key" in messages["waited"]
    )
    assert "send skipped: its idempotency key was running" in messages["skipped"]


def test_a_replayed_recorded_error_logs_once_at_error(
    records: list[logging.LogRecord],
) -> None:
    """A recorded error logs ERROR when raised, then "replayed" without a traceback."""

    @logged
    @idempotent(key="k", store=MemoryStore(), record_errors=ValueError)
    def refuse() -> None:
        raise ValueError("no")

    for _ in range(2):
        with pytest.raises(ValueError, match="no"):
            refuse()
    ends = [r for r in records if "duration" in vars(r)]
    assert [(r.levelname, vars(r)["outcome"], r.exc_info is None) for r in ends] == [
        ("ERROR", "failed", False),
        ("INFO", "replayed", True),
    ]


def test_only_idempotent_functions_under_logged_report() -> None:
    """An idempotent function with no logged above never writes to a logged call."""
    plain = idempotent(key="k", store=MemoryStore())(lambda: 1)
    below = idempotent(key="k", store=MemoryStore())(lambda: 2)
    logged(retry()(below))  # logged finds the idempotent through retry
    written = {}
    for name, f in (("plain", plain), ("below", below)):
        slot: dict[str, Any] = {}
        token = outcome_var.set(slot)
        try:
            f()
            f()
        finally:
            outcome_var.reset(token)
        written[name] = slot.get("outcome")
    assert written == {"plain": None, "below": "replayed"}
