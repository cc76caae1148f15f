"""bgtasks.retry: what is retried, how often, and what comes out, sync and async."""

from __future__ import annotations

import asyncio
import functools
import gc
import inspect
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import anyio
import pytest
from starlette._utils import is_async_callable

from bgtasks import RetryEvent, retry
from bgtasks._context import attempt_var, running_task_var

pytestmark = pytest.mark.anyio

NOTES = sys.version_info >= (3, 11)


def notes(exc: BaseException) -> list[str]:
    """The PEP 678 notes of ``exc`` (none before 3.11)."""
    return list(getattr(exc, "__notes__", []))


class Flaky:
    """Raise the given exceptions one per call, then return ``result``."""

    def __init__(self, *errors: BaseException, result: object = "ok") -> None:
        self.errors = list(errors)
        self.result = result
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Forward(Flaky):
    """A Flaky that forwards to a plain function instead."""

    def __init__(self, func: Callable[..., object]) -> None:
        super().__init__()
        self.func = func

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        return self.func(*args, **kwargs)


def flaky_sync(flaky: Flaky, **options: Any) -> Callable[..., Any]:
    """A sync task decorated with ``retry(**options)`` that runs ``flaky``."""

    @retry(**options)
    def task(*args: object, **kwargs: object) -> object:
        return flaky(*args, **kwargs)

    return task


def flaky_async(flaky: Flaky, **options: Any) -> Callable[..., Any]:
    """An async task decorated with ``retry(**options)`` that runs ``flaky``."""

    @retry(**options)
    async def task(*args: object, **kwargs: object) -> object:
        await anyio.lowlevel.checkpoint()
        return flaky(*args, **kwargs)

    return task


async def call(task: Callable[..., Any], *args: object, **kwargs: object) -> Any:
    """Call a sync or async task and return its result."""
    result = task(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


@pytest.fixture(params=["sync", "async"])
def make(request: pytest.FixtureRequest) -> Callable[..., Callable[..., Any]]:
    """Build the task under test once as a def and once as an async def."""
    return flaky_sync if request.param == "sync" else flaky_async


async def test_success_on_first_try_calls_once(make: Any) -> None:
    """A call that succeeds runs once and returns its result untouched."""
    flaky = Flaky(result=42)
    assert await call(make(flaky, backoff=0), 1, key="v") == 42
    assert flaky.calls == 1


async def test_fails_then_succeeds(make: Any) -> None:
    """Two failures then a success return the success, after three calls."""
    flaky = Flaky(ConnectionError("a"), ConnectionError("b"), result="sent")
    assert await call(make(flaky, backoff=0)) == "sent"
    assert flaky.calls == 3


async def test_arguments_are_passed_again_on_each_attempt(make: Any) -> None:
    """Every attempt gets the same positional and keyword arguments."""
    seen: list[tuple[tuple[object, ...], dict[str, object]]] = []

    def record(*args: object, **kwargs: object) -> str:
        seen.append((args, kwargs))
        if len(seen) < 2:
            raise ConnectionError
        return "ok"

    assert await call(make(Forward(record), backoff=0), 1, to="x") == "ok"
    assert seen == [((1,), {"to": "x"})] * 2


async def test_exhaustion_reraises_the_last_exception_object(make: Any) -> None:
    """When attempts run out, the last exception itself propagates."""
    last = ConnectionError("third")
    flaky = Flaky(ConnectionError("first"), ConnectionError("second"), last)
    with pytest.raises(ConnectionError) as info:
        await call(make(flaky, attempts=3, backoff=0))
    assert last is info.value
    assert flaky.calls == 3
    assert info.value.__context__ is None
    assert "__call__" in [entry.name for entry in info.traceback]


@pytest.mark.skipif(not NOTES, reason="PEP 678 notes exist on 3.11+")
async def test_exhaustion_adds_one_note(make: Any) -> None:
    """The re-raised exception carries a note saying that retry gave up."""
    flaky = Flaky(*(TimeoutError("slow") for _ in range(3)))
    with pytest.raises(TimeoutError) as info:
        await call(make(flaky, attempts=3, backoff=0))
    [note] = notes(info.value)
    assert note.startswith("bgtasks.retry: gave up on ")
    assert "task after 3 attempts in " in note


@pytest.mark.skipif(not NOTES, reason="PEP 678 notes exist on 3.11+")
def test_the_same_exception_object_does_not_pile_up_notes() -> None:
    """A cached exception raised by every call keeps one note per function."""
    error = ConnectionError("down")
    task = flaky_sync(Flaky(*[error] * 6), attempts=2, backoff=0)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            task()
    assert len(notes(error)) == 1
    assert "after 2 attempts" in notes(error)[0]


@pytest.mark.skipif(not NOTES, reason="PEP 678 notes exist on 3.11+")
def test_nested_retries_each_add_their_note() -> None:
    """An inner and an outer retry each say once that they gave up."""
    error = ConnectionError("down")

    @retry(attempts=2, backoff=0)
    def inner() -> None:
        raise error

    @retry(attempts=3, backoff=0)
    def outer() -> None:
        inner()

    with pytest.raises(ConnectionError):
        outer()
    assert len(notes(error)) == 2
    assert "inner after 2 attempts" in notes(error)[0]
    assert "outer after 3 attempts" in notes(error)[1]


def test_notes_that_are_not_a_list_are_left_alone() -> None:
    """A non-list ``__notes__`` is left alone (add_note would fail on it)."""
    error = ConnectionError("down")
    error.__notes__ = ("user note",)  # type: ignore[attr-defined]
    task = flaky_sync(Flaky(error), attempts=1)
    with pytest.raises(ConnectionError):
        task()
    assert error.__notes__ == ("user note",)  # type: ignore[attr-defined]


async def test_attempts_one_never_retries(make: Any) -> None:
    """attempts=1 calls once and re-raises."""
    flaky = Flaky(ConnectionError())
    with pytest.raises(ConnectionError):
        await call(make(flaky, attempts=1))
    assert flaky.calls == 1


async def test_on_class_retries_only_that_class(make: Any) -> None:
    """on=ConnectionError retries it, and lets any other exception out at once."""
    flaky = Flaky(ConnectionError(), ValueError("bad"), result="never")
    with pytest.raises(ValueError, match="bad") as info:
        await call(make(flaky, on=ConnectionError, attempts=5, backoff=0))
    assert flaky.calls == 2
    assert not getattr(info.value, "__notes__", [])


async def test_on_tuple_retries_each_class(make: Any) -> None:
    """on=(A, B) retries both, subclasses included."""
    flaky = Flaky(ConnectionRefusedError(), TimeoutError(), result="ok")
    task = make(flaky, on=(ConnectionError, TimeoutError), backoff=0)
    assert await call(task) == "ok"
    assert flaky.calls == 3


async def test_on_predicate_decides(make: Any) -> None:
    """A predicate sees each exception and decides whether to retry it."""
    seen: list[Exception] = []

    def transient(exc: Exception) -> bool:
        seen.append(exc)
        return "503" in str(exc)

    retryable, fatal = OSError("503"), OSError("404")
    flaky = Flaky(retryable, fatal)
    with pytest.raises(OSError, match="404"):
        await call(make(flaky, on=transient, attempts=5, backoff=0))
    assert [retryable, fatal] == seen


async def test_non_retryable_first_failure_keeps_its_traceback(make: Any) -> None:
    """An exception that ``on`` rejects propagates as if there were no retry."""
    error = KeyError("x")
    with pytest.raises(KeyError) as info:
        await call(make(Flaky(error), on=ConnectionError))
    assert error is info.value
    assert info.traceback[-1].name == "__call__"


@pytest.mark.parametrize(
    "error",
    [KeyboardInterrupt(), SystemExit(1), GeneratorExit(), asyncio.CancelledError()],
    ids=["KeyboardInterrupt", "SystemExit", "GeneratorExit", "CancelledError"],
)
def test_base_exceptions_are_never_retried_nor_seen(error: BaseException) -> None:
    """Cancellation and interpreter exits escape even a catch-all predicate and hook."""
    seen: list[object] = []

    def catch_all(exc: Exception) -> bool:
        seen.append(exc)
        return True

    flaky = Flaky(error, result="retried!")
    task = flaky_sync(flaky, on=catch_all, on_retry=seen.append, backoff=0)
    with pytest.raises(type(error)):
        task()
    assert flaky.calls == 1
    assert seen == []


async def test_result_retry_until_accepted(make: Any) -> None:
    """retry_if retries a call whose result it rejects, until one passes."""
    results = iter([None, None, "done"])
    flaky = Forward(lambda: next(results))
    assert await call(make(flaky, retry_if=lambda r: r is None, backoff=0)) == "done"


async def test_result_retry_exhausted_returns_the_last_result(
    make: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """When attempts run out on rejected results, the last result is returned."""
    results = iter([{"status": 1}, {"status": 2}, {"status": 3}])
    flaky = Forward(lambda: next(results))
    task = make(flaky, attempts=3, retry_if=lambda r: r["status"] != 0, backoff=0)
    with caplog.at_level("WARNING", logger="bgtasks"):
        assert await call(task) == {"status": 3}
    assert "returning the last result" in caplog.records[-1].getMessage()
    assert "status" not in caplog.text


async def test_result_and_exception_retries_mix(make: Any) -> None:
    """An exception and a rejected result both count as failed attempts."""
    flaky = Flaky(ConnectionError(), result=None)
    outcomes = iter([None, "ok"])
    wrapped = Forward(lambda: flaky() and next(outcomes))
    task = make(wrapped, attempts=2, retry_if=lambda r: r is None, backoff=0)
    assert await call(task) is None
    assert flaky.calls == 2


async def test_result_retry_then_non_retryable_exception(make: Any) -> None:
    """A rejected result, then an exception ``on`` rejects: that exception escapes."""
    flaky = Flaky(result=None)
    errors = iter([None, KeyError("k")])

    def body() -> object:
        error = next(errors)
        if error is not None:
            raise error
        return flaky()

    task = make(
        Forward(body), on=ConnectionError, retry_if=lambda r: r is None, backoff=0
    )
    with pytest.raises(KeyError):
        await call(task)


async def test_attempt_number_is_published(make: Any) -> None:
    """attempt_var reads 1, 2, 3 in the attempts and 1 again after the call."""
    seen: list[int] = []

    def body() -> str:
        seen.append(attempt_var.get())
        if len(seen) < 3:
            raise ConnectionError
        return "ok"

    assert await call(make(Forward(body), backoff=0)) == "ok"
    assert seen == [1, 2, 3]
    assert attempt_var.get() == 1


async def test_attempt_var_is_reset_after_a_failed_attempt(make: Any) -> None:
    """Giving up leaves attempt_var as it found it."""
    with pytest.raises(ConnectionError):
        await call(make(Flaky(*[ConnectionError()] * 3), backoff=0))
    assert attempt_var.get() == 1


async def test_running_task_hears_each_retry_attempt(make: Any) -> None:
    """A managed task's record_attempt is called with 2, 3 (never for attempt 1)."""

    class Task:
        id = "t1"
        attempts: list[int] = []  # noqa: RUF012

        def owns_retry(self, func: object) -> bool:
            return True

        def record_attempt(self, attempt: int) -> None:
            self.attempts.append(attempt)

        def record_retry_wait(self, until: float) -> None: ...

    task = Task()
    token = running_task_var.set(task)
    try:
        flaky = Flaky(ConnectionError(), ConnectionError())
        assert await call(make(flaky, backoff=0)) == "ok"
    finally:
        running_task_var.reset(token)
    assert task.attempts == [2, 3]


async def test_concurrent_async_calls_are_independent() -> None:
    """Many concurrent calls of one function each count their own attempts."""

    @retry(attempts=5, backoff=0)
    async def task(needed: int) -> int:
        await anyio.sleep(0)
        if attempt_var.get() < needed:
            raise ConnectionError
        return attempt_var.get()

    results: dict[int, int] = {}

    async def run(i: int) -> None:
        results[i] = await task(1 + i % 5)

    async with anyio.create_task_group() as tg:
        for i in range(200):
            tg.start_soon(run, i)
    assert {i: 1 + i % 5 for i in range(200)} == results


def test_concurrent_threads_are_independent() -> None:
    """Many threads calling one sync function each count their own attempts."""
    barrier = threading.Barrier(8)

    @retry(attempts=5, backoff=0)
    def task(needed: int) -> int:
        if attempt_var.get() == 1:
            barrier.wait(timeout=5)
        if attempt_var.get() < needed:
            raise ConnectionError
        return attempt_var.get()

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(task, [1 + i % 5 for i in range(400)]))
    assert [1 + i % 5 for i in range(400)] == results


def test_methods_keep_their_binding() -> None:
    """A decorated method receives ``self`` on every attempt."""

    class Mailer:
        def __init__(self) -> None:
            self.calls = 0

        @retry(backoff=0)
        def send(self, to: str) -> str:
            self.calls += 1
            if self.calls < 2:
                raise ConnectionError
            return f"sent to {to}"

    mailer = Mailer()
    assert mailer.send("a") == "sent to a"
    assert mailer.calls == 2


def test_event_fields_for_an_exception() -> None:
    """on_retry gets the name, attempt, exception, delay and elapsed time."""
    events: list[RetryEvent] = []
    error = ConnectionError("x")

    @retry(backoff=0, on_retry=events.append)
    def send() -> str:
        if not events:
            raise error
        return "ok"

    assert send() == "ok"
    [event] = events
    assert (
        event.name,
        event.attempt,
    ) == ("test_event_fields_for_an_exception.<locals>.send", 1)
    assert error is event.exception
    assert event.result is None
    assert event.delay == 0.0
    assert event.elapsed >= 0


def test_event_is_frozen() -> None:
    """A RetryEvent cannot be changed by a hook."""
    event = RetryEvent(name="f", attempt=1, exception=None, delay=0.0, elapsed=0.0)
    with pytest.raises(AttributeError):
        event.attempt = 2  # type: ignore[misc]


def test_wrapped_sync_function_stays_sync_for_starlette() -> None:
    """A decorated def is still a plain function: Starlette runs it in a thread."""

    def send(to: str, *, subject: str = "hi") -> None:
        """Send it."""

    wrapped = retry()(send)
    assert not is_async_callable(wrapped)
    assert not inspect.iscoroutinefunction(wrapped)
    assert send is wrapped.__wrapped__  # type: ignore[attr-defined]
    assert (wrapped.__name__, wrapped.__doc__) == ("send", "Send it.")
    assert inspect.signature(send) == inspect.signature(wrapped)


def test_wrapped_async_function_stays_async_for_starlette() -> None:
    """A decorated async def is still a coroutine function: Starlette awaits it."""

    async def send(to: str) -> None:
        """Send it."""

    wrapped = retry()(send)
    assert is_async_callable(wrapped)
    assert inspect.iscoroutinefunction(wrapped)
    assert send is wrapped.__wrapped__  # type: ignore[attr-defined]
    assert inspect.signature(send) == inspect.signature(wrapped)


@pytest.mark.parametrize("options", [{}, {"deadline": 60}, {"retry_if": bool}])
async def test_predicate_rejecting_the_first_failure(
    make: Any, options: dict[str, Any]
) -> None:
    """A first exception that the predicate rejects escapes after one call."""
    flaky = Flaky(OSError("404"))
    task = make(flaky, on=lambda exc: "503" in str(exc), **options)
    with pytest.raises(OSError, match="404"):
        await call(task)
    assert flaky.calls == 1


async def test_partials_are_retried_under_their_function_name() -> None:
    """A functools.partial keeps its kind, and events name the wrapped function."""
    events: list[RetryEvent] = []

    def send(to: str, subject: str) -> str:
        if not events:
            raise ConnectionError
        return f"{subject} to {to}"

    async def asend(to: str, subject: str) -> str:
        return send(to, subject)

    sync_task = retry(backoff=0, on_retry=events.append)(functools.partial(send, "a"))
    async_task = retry(backoff=0, on_retry=events.append)(functools.partial(asend, "b"))
    assert sync_task("hi") == "hi to a"
    assert await async_task("yo") == "yo to b"
    assert not is_async_callable(sync_task)
    assert is_async_callable(async_task)
    assert [e.name for e in events] == [
        "test_partials_are_retried_under_their_function_name.<locals>.send"
    ]


@pytest.mark.parametrize("attempts", [1, 3])
async def test_giving_up_leaves_no_reference_cycle(make: Any, attempts: int) -> None:
    """The final exception is freed as soon as the caller drops it, without the GC."""

    class Refused(ConnectionError):
        pass

    flaky = Flaky(*(Refused() for _ in range(attempts)))
    task = make(flaky, attempts=attempts, backoff=0)
    gc.disable()
    try:
        try:
            await call(task)
        except Refused as exc:
            ref = weakref.ref(exc)
        assert ref() is None
    finally:
        gc.enable()
