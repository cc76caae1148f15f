"""bgtasks.retry options: hooks, logging, custom backoffs, decoration-time errors."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest

from bgtasks import RetryEvent, backoff, retry

pytestmark = pytest.mark.anyio

SECRET = "alice@example.com-token-123"


def failing(times: int, error: Exception | None = None) -> Callable[[], None]:
    """A body that raises ``error`` (a ConnectionError) ``times`` times."""
    calls = iter(range(times + 1))

    def body() -> None:
        if next(calls) < times:
            raise error or ConnectionError("connection refused")

    return body


# --- hooks -----------------------------------------------------------------


def test_sync_hook_sees_each_retry_in_order() -> None:
    """on_retry is called once per retry, with increasing attempt numbers."""
    events: list[RetryEvent] = []
    body = failing(2)

    @retry(on_retry=events.append, backoff=backoff.linear(0, 0))
    def task() -> None:
        body()

    task()
    assert [e.attempt for e in events] == [1, 2]
    assert all(isinstance(e.exception, ConnectionError) for e in events)


async def test_async_hook_is_awaited_for_async_functions() -> None:
    """An async on_retry hook runs to completion before the next attempt."""
    events: list[int] = []

    async def hook(event: RetryEvent) -> None:
        await anyio.sleep(0)
        events.append(event.attempt)

    body = failing(2)

    @retry(on_retry=hook, backoff=0)
    async def task() -> None:
        body()

    await task()
    assert events == [1, 2]


async def test_sync_hook_works_on_async_functions() -> None:
    """A plain on_retry hook is fine on an async function."""
    events: list[RetryEvent] = []
    body = failing(1)

    @retry(on_retry=events.append, backoff=0)
    async def task() -> None:
        body()

    await task()
    assert len(events) == 1


def test_async_hook_on_sync_function_is_refused_at_decoration() -> None:
    """A sync function cannot await a hook: TypeError when decorating."""

    async def hook(event: RetryEvent) -> None: ...

    decorator = retry(on_retry=hook)
    with pytest.raises(TypeError, match="on_retry"):

        @decorator
        def task() -> None: ...


def test_hook_returning_a_coroutine_in_a_sync_function_is_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync-looking hook that returns a coroutine is closed and logged, not leaked."""

    async def later(event: RetryEvent) -> None: ...

    body = failing(1)

    # The lambda hides that the hook is async: it looks sync to retry.
    @retry(on_retry=lambda event: later(event), backoff=0)  # noqa: PLW0108
    def task() -> str:
        body()
        return "ok"

    with caplog.at_level("ERROR", logger="bgtasks"):
        assert task() == "ok"
    assert "returned an awaitable" in caplog.text


def test_hook_returning_a_non_closable_awaitable_is_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync hook returning another awaitable is ignored and logged."""

    class Waitable:
        def __await__(self) -> Iterator[None]:
            yield

    body = failing(1)

    @retry(on_retry=lambda event: Waitable(), backoff=0)
    def task() -> None:
        body()

    with caplog.at_level("ERROR", logger="bgtasks"):
        task()
    assert "returned an awaitable" in caplog.text


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_failing_hook_is_logged_and_retries_go_on(
    kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A hook that raises does not stop the retries nor hide the task's result."""

    def sync_hook(event: RetryEvent) -> None:
        raise RuntimeError("hook bug")

    async def async_hook(event: RetryEvent) -> None:
        raise RuntimeError("hook bug")

    body = failing(2)

    @retry(on_retry=sync_hook if kind == "sync" else async_hook, backoff=0)
    async def task() -> str:
        body()
        return "ok"

    with caplog.at_level("WARNING", logger="bgtasks"):
        assert await task() == "ok"
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "on_retry hook" in errors[0].getMessage()
    assert errors[0].exc_info is not None


def test_a_failing_hook_never_replaces_the_task_exception() -> None:
    """When retries run out, the task's exception escapes, not the hook's."""

    def hook(event: RetryEvent) -> None:
        raise RuntimeError("hook bug")

    @retry(on_retry=hook, backoff=0, attempts=2)
    def task() -> None:
        raise ConnectionError("down")

    with pytest.raises(ConnectionError, match="down"):
        task()


def test_no_hook_call_when_giving_up() -> None:
    """The last failed attempt is not a retry: no hook call for it."""
    events: list[RetryEvent] = []

    @retry(on_retry=events.append, backoff=0, attempts=3)
    def task() -> None:
        raise ConnectionError

    with pytest.raises(ConnectionError):
        task()
    assert [e.attempt for e in events] == [1, 2]


# --- logging ---------------------------------------------------------------


def test_each_retry_is_logged_at_warning_without_arguments(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One WARNING per retry: type, extra fields; no message, no argument values."""
    body = failing(2)

    @retry(backoff=0)
    def send_email(to: str, token: str) -> None:
        body()

    with caplog.at_level("DEBUG", logger="bgtasks"):
        send_email(SECRET, token=SECRET)
    records = [r for r in caplog.records if r.name == "bgtasks"]
    assert len(records) == 2
    for attempt, record in enumerate(records, start=1):
        assert record.levelno == logging.WARNING
        message = record.getMessage()
        assert "failed (ConnectionError); retrying" in message
        assert "connection refused" not in message  # the exception's message
        assert "send_email" in message
        assert record.task_name.endswith("send_email")  # type: ignore[attr-defined]
        assert attempt == record.attempt  # type: ignore[attr-defined]
        assert record.delay == 0.0  # type: ignore[attr-defined]
        assert record.elapsed >= 0  # type: ignore[attr-defined]
        assert SECRET not in message
        assert SECRET not in repr(record.args)
        assert record.exc_info is None


def test_an_exception_without_message_is_logged_by_its_type(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception with an empty message is logged by its type, like any other."""
    body = failing(1, TimeoutError())

    @retry(backoff=0)
    def task() -> None:
        body()

    with caplog.at_level("WARNING", logger="bgtasks"):
        task()
    assert "failed (TimeoutError); retrying" in caplog.text


def test_result_retries_are_logged_without_the_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A rejected result is logged as such, never its value."""
    results = iter([SECRET, "fine"])

    @retry(retry_if=lambda r: r == SECRET, backoff=0)
    def fetch() -> str:
        return next(results)

    with caplog.at_level("WARNING", logger="bgtasks"):
        assert fetch() == "fine"
    assert "rejected by retry_if" in caplog.text
    assert SECRET not in caplog.text


def test_a_passed_logger_is_used(caplog: pytest.LogCaptureFixture) -> None:
    """logger= sends the retry records to the user's logger."""
    body = failing(1)

    @retry(backoff=0, logger=logging.getLogger("myapp.tasks"))
    def task() -> None:
        body()

    with caplog.at_level("WARNING"):
        task()
    assert [r.name for r in caplog.records] == ["myapp.tasks"]


def test_a_silenced_logger_gets_no_record_and_nothing_is_formatted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Above WARNING, a retry makes no LogRecord and never calls str(exception)."""
    formatted: list[str] = []

    class Refused(ConnectionError):
        def __str__(self) -> str:
            formatted.append("str")
            return "refused"

    made: list[logging.LogRecord] = []
    real = logging.Logger.makeRecord

    def make_record(self: logging.Logger, *args: Any, **kwargs: Any) -> Any:
        record = real(self, *args, **kwargs)
        made.append(record)
        return record

    monkeypatch.setattr(logging.Logger, "makeRecord", make_record)
    log = logging.getLogger("bgtasks")
    monkeypatch.setattr(log, "level", logging.CRITICAL + 1)
    log.manager._clear_cache()  # type: ignore[attr-defined]
    body = failing(2, Refused())

    @retry(backoff=0)
    def task() -> None:
        body()

    try:
        task()
    finally:
        log.manager._clear_cache()  # type: ignore[attr-defined]
    assert [r for r in made if r.name == "bgtasks"] == []
    assert formatted == []


# --- custom backoff --------------------------------------------------------


def test_custom_backoff_callable_gets_the_failed_attempt() -> None:
    """Any (attempt) -> seconds callable works; it is called with 1, 2, ..."""
    asked: list[int] = []
    events: list[RetryEvent] = []

    def no_wait(attempt: int) -> float:
        asked.append(attempt)
        return 0

    body = failing(3)

    @retry(attempts=4, backoff=no_wait, on_retry=events.append)
    def task() -> None:
        body()

    task()
    assert asked == [1, 2, 3]
    assert [e.delay for e in events] == [0.0, 0.0, 0.0]


def test_a_number_is_a_fixed_backoff() -> None:
    """backoff=0 (a number of seconds) is backoff.fixed(0)."""
    events: list[RetryEvent] = []
    body = failing(1)

    @retry(backoff=0, on_retry=events.append)
    def task() -> None:
        body()

    task()
    assert [e.delay for e in events] == [0.0]


@pytest.mark.parametrize(
    ("returned", "error"),
    [(-1, ValueError), (float("nan"), ValueError), ("1", TypeError), (True, TypeError)],
)
def test_a_custom_backoff_returning_nonsense_fails_with_the_cause(
    returned: Any, error: type[Exception]
) -> None:
    """A bad delay from a user's backoff raises, chained to the task's exception."""

    @retry(backoff=lambda attempt: returned)
    def task() -> None:
        raise ConnectionError("down")

    with pytest.raises(error, match="backoff") as info:
        task()
    assert isinstance(info.value.__cause__, ConnectionError)


# --- decoration-time errors ------------------------------------------------


def test_bare_decorator_is_refused_with_the_fix() -> None:
    """@retry without parentheses raises a TypeError saying to write @retry()."""

    def task() -> None: ...

    with pytest.raises(TypeError, match=r"write @retry\(\)"):
        retry(task)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"attempts": 0}, ValueError, "attempts"),
        ({"attempts": -3}, ValueError, "attempts"),
        ({"attempts": True}, TypeError, "attempts"),
        ({"attempts": 2.5}, TypeError, "attempts"),
        ({"on": KeyboardInterrupt}, ValueError, "can never retry"),
        ({"on": BaseException}, ValueError, "on=BaseException"),
        ({"on": (ValueError, SystemExit)}, ValueError, "SystemExit"),
        ({"on": ()}, ValueError, "on"),
        ({"on": (ValueError, int)}, TypeError, "on"),
        ({"on": int}, TypeError, "on"),
        ({"on": "ConnectionError"}, TypeError, "on"),
        ({"backoff": "fast"}, TypeError, "backoff"),
        ({"backoff": int}, TypeError, "backoff"),
        ({"backoff": True}, TypeError, "backoff"),
        ({"backoff": -1}, ValueError, "backoff"),
        ({"backoff": float("nan")}, ValueError, "backoff"),
        ({"deadline": 0}, ValueError, "deadline"),
        ({"deadline": -1.0}, ValueError, "deadline"),
        ({"deadline": float("inf")}, ValueError, "deadline"),
        ({"deadline": timedelta(0)}, ValueError, "deadline"),
        ({"deadline": "5s"}, TypeError, "deadline"),
        ({"deadline": True}, TypeError, "deadline"),
        ({"retry_if": 3}, TypeError, "retry_if"),
        ({"on_retry": "print"}, TypeError, "on_retry"),
        ({"logger": "bgtasks"}, TypeError, "logger"),
    ],
)
def test_bad_options_fail_when_decorating(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option raises at retry(...) time, naming the argument."""
    with pytest.raises(error, match=match):
        retry(**options)


def test_deadline_accepts_a_timedelta() -> None:
    """deadline=timedelta(...) is accepted like seconds."""
    assert callable(retry(deadline=timedelta(seconds=5)))


@pytest.mark.parametrize("target", ["generator", "async generator", "class", "value"])
def test_undecoratable_targets_are_refused(target: str) -> None:
    """Generators, async generators, classes and non-callables raise TypeError."""

    def gen() -> Iterator[int]:
        yield 1

    async def agen() -> Any:
        yield 1

    class Task: ...

    targets: dict[str, Any] = {
        "generator": gen,
        "async generator": agen,
        "class": Task,
        "value": 42,
    }
    with pytest.raises(TypeError, match="@retry"):
        retry()(targets[target])
