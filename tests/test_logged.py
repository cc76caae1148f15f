"""``logged``: records, levels, extra fields, argument privacy, suppression."""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable
from typing import Any, Literal, cast

import anyio
import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTasks
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bgtasks import TaskManager, idempotent, logged, retry, timeout
from bgtasks._context import LOGGED_MARKER, attempt_var, running_task_var

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from starlette.testclient import TestClient

SECRET_EMAIL = "alice@example.com"
SECRET_TOKEN = "tok-3f9a"


class _Stop(BaseException):
    """Stands for a cancellation or an interpreter exit: not an Exception."""


class _FakeTask:
    """The part of a TaskManager task that ``logged`` reads."""

    id = "task-7"

    def owns_retry(self, func: object) -> bool:  # pragma: no cover
        return True

    def record_attempt(self, attempt: int) -> None: ...  # pragma: no cover

    def record_retry_wait(self, until: float) -> None: ...  # pragma: no cover


@pytest.fixture(params=["asyncio", "trio"])
def backend_name(request: pytest.FixtureRequest) -> Literal["asyncio", "trio"]:
    """Run a sync test's Starlette app on each anyio backend."""
    return cast('Literal["asyncio", "trio"]', request.param)


def _texts(record: logging.LogRecord) -> str:
    return f"{record.getMessage()} {record.__dict__!r}"


def test_sync_success_logs_start_and_finish(records: list[logging.LogRecord]) -> None:
    """A sync call logs start and success at INFO with the structured fields."""

    @logged
    def write_notification(email: str) -> int:
        return len(email)

    assert write_notification(SECRET_EMAIL) == len(SECRET_EMAIL)
    start, done = records
    assert [(r.name, r.levelno) for r in records] == [("bgtasks", logging.INFO)] * 2
    name = "test_sync_success_logs_start_and_finish.<locals>.write_notification"
    assert start.getMessage() == f"{name} started"
    fields = vars(start)
    assert (fields["task_name"], fields["task_id"], fields["attempt"]) == (
        name,
        None,
        1,
    )
    assert not hasattr(start, "duration")
    assert (vars(done)["task_name"], vars(done)["outcome"]) == (name, "succeeded")
    assert vars(done)["duration"] >= 0
    assert done.getMessage().startswith(f"{name} succeeded in ")


@pytest.mark.anyio
async def test_async_failure_logs_error_with_traceback_and_reraises(
    records: list[logging.LogRecord],
) -> None:
    """An async failure is logged at ERROR with exc_info, then re-raised."""
    boom = ConnectionError("SMTP down")

    @logged
    async def send_welcome_email(email: str) -> None:
        await anyio.sleep(0)
        raise boom

    with pytest.raises(ConnectionError) as caught:
        await send_welcome_email(SECRET_EMAIL)
    assert caught.value is boom
    start, failed = records
    assert (start.levelno, failed.levelno) == (logging.INFO, logging.ERROR)
    assert failed.exc_info is not None
    assert failed.exc_info[1] is boom
    assert (vars(failed)["outcome"], vars(failed)["attempt"]) == ("failed", 1)
    assert vars(failed)["duration"] >= 0
    assert "suppressed" not in failed.getMessage()


def test_argument_values_are_not_logged_by_default(
    records: list[logging.LogRecord],
) -> None:
    """Without log_args, no record carries the arguments' values, even on failure."""

    @logged
    def charge(email: str, token: str) -> None:
        raise ValueError("declined")

    with pytest.raises(ValueError, match="declined"):
        charge(SECRET_EMAIL, token=SECRET_TOKEN)
    assert len(records) == 2
    for record in records:
        assert SECRET_EMAIL not in _texts(record)
        assert SECRET_TOKEN not in _texts(record)
        assert not hasattr(record, "task_args")


def test_log_args_with_redaction(records: list[logging.LogRecord]) -> None:
    """log_args logs reprs by parameter name; redacted names, kwargs keys show ***."""

    @logged(log_args=True, redact=("token", "api_key"))
    def charge(email: str, token: str, *cents: int, **options: Any) -> None: ...

    charge(SECRET_EMAIL, SECRET_TOKEN, 100, 250, api_key="k-1", retries=3)
    start = records[0]
    expected = {
        "email": repr(SECRET_EMAIL),
        "token": "***",
        "cents": "(100, 250)",
        "api_key": "***",
        "retries": "3",
    }
    assert expected == vars(start)["task_args"]
    assert SECRET_TOKEN not in _texts(start)
    assert "k-1" not in _texts(start)
    assert "email='alice@example.com', token=***" in start.getMessage()


def test_log_args_cuts_long_values_short(records: list[logging.LogRecord]) -> None:
    """A huge argument is logged as a bounded repr; a call without any says so."""

    @logged(log_args=True)
    def store(blob: bytes) -> None: ...

    @logged(log_args=True)
    def tick() -> None: ...

    tick()
    assert records[0].getMessage().endswith("tick started with no arguments")
    store(b"x" * 100_000)
    assert len(vars(records[-2])["task_args"]["blob"]) <= 200


def test_log_args_with_arguments_that_do_not_bind(
    records: list[logging.LogRecord],
) -> None:
    """A call whose arguments do not fit the signature logs none and fails as usual."""

    @logged(log_args=True)
    def greet(name: str) -> str:
        return name  # pragma: no cover - the call never gets here

    with pytest.raises(TypeError):
        greet("a", "b")  # type: ignore[call-arg]
    assert vars(records[0])["task_args"] == {}
    assert records[0].getMessage().endswith("arguments that do not fit its signature")


def test_task_id_and_attempt_come_from_context(
    records: list[logging.LogRecord],
) -> None:
    """task_id and attempt are read from the TaskManager and retry context."""

    @logged
    def work() -> None: ...

    task_token = running_task_var.set(_FakeTask())
    attempt_token = attempt_var.set(3)
    try:
        work()
    finally:
        attempt_var.reset(attempt_token)
        running_task_var.reset(task_token)
    assert [(vars(r)["task_id"], vars(r)["attempt"]) for r in records] == [
        ("task-7", 3)
    ] * 2


@pytest.mark.parametrize("suppress", [False, True])
@pytest.mark.anyio
async def test_cancellation_is_logged_and_never_swallowed(
    records: list[logging.LogRecord], suppress: bool
) -> None:
    """A cancelled call is logged without traceback and re-raised, suppress or not."""

    @logged(suppress=suppress)
    async def hang() -> None:
        await anyio.sleep_forever()

    with anyio.CancelScope() as scope:
        scope.cancel()
        await hang()
    assert scope.cancelled_caught
    _, cancelled = records
    assert (cancelled.levelno, vars(cancelled)["outcome"]) == (
        logging.INFO,
        "cancelled",
    )
    assert cancelled.exc_info is None
    assert anyio.get_cancelled_exc_class().__name__ in cancelled.getMessage()


def test_sync_base_exception_is_reraised_even_with_suppress(
    records: list[logging.LogRecord],
) -> None:
    """suppress catches Exception only: a BaseException goes through, logged."""

    @logged(suppress=True)
    def work() -> None:
        raise _Stop

    with pytest.raises(_Stop):
        work()
    assert vars(records[-1])["outcome"] == "cancelled"


def test_sync_suppress_returns_none_after_logging(
    records: list[logging.LogRecord],
) -> None:
    """With suppress, a sync failure is logged at ERROR and the call returns None."""

    @logged(suppress=True)
    def work() -> int:
        raise RuntimeError("broken")

    assert work() is None
    failed = records[-1]
    assert (failed.levelno, vars(failed)["outcome"]) == (logging.ERROR, "failed")
    assert "(suppressed: returning None)" in failed.getMessage()


@pytest.mark.anyio
async def test_async_suppress_returns_none(records: list[logging.LogRecord]) -> None:
    """With suppress, an async failure is logged at ERROR and the call returns None."""

    @logged(suppress=True)
    async def work() -> int:
        raise RuntimeError("broken")

    assert await work() is None
    assert records[-1].levelno == logging.ERROR


@pytest.mark.anyio
async def test_async_success(records: list[logging.LogRecord]) -> None:
    """An async call that succeeds returns its result and logs two records."""

    @logged(level="debug")
    async def work(x: int) -> int:
        return x + 1

    assert await work(1) == 2
    assert [r.levelno for r in records] == [logging.DEBUG, logging.DEBUG]
    assert vars(records[-1])["outcome"] == "succeeded"


def test_level_below_logger_threshold_still_logs_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With level under the logger's threshold, only failures are logged, in full."""
    caplog.set_level(logging.INFO, logger="bgtasks")

    @logged(level=logging.DEBUG)
    def work(fail: bool) -> None:
        if fail:
            raise RuntimeError("broken")

    @logged(level=logging.DEBUG)
    def stop() -> None:
        raise _Stop

    work(fail=False)
    with pytest.raises(_Stop):
        stop()
    assert caplog.records == []
    with pytest.raises(RuntimeError):
        work(fail=True)
    [failed] = caplog.records
    assert (
        failed.levelno,
        vars(failed)["outcome"],
        vars(failed)["attempt"],
    ) == (logging.ERROR, "failed", 1)


@pytest.mark.anyio
async def test_async_level_below_logger_threshold_logs_nothing_on_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An async call under the logger's threshold returns without logging."""
    caplog.set_level(logging.INFO, logger="bgtasks")

    @logged(level=logging.DEBUG)
    async def work() -> str:
        return "done"

    assert await work() == "done"
    assert caplog.records == []


def test_failures_are_skipped_when_error_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A logger that drops ERROR gets nothing, and the exception still propagates."""
    caplog.set_level(logging.CRITICAL, logger="bgtasks")

    @logged
    def work() -> None:
        raise RuntimeError("broken")

    with pytest.raises(RuntimeError):
        work()
    assert caplog.records == []


@pytest.mark.parametrize(
    "option", ["app.tasks", logging.getLogger("app.tasks")], ids=["name", "logger"]
)
def test_custom_logger(caplog: pytest.LogCaptureFixture, option: Any) -> None:
    """The logger can be given by name or as a Logger."""
    caplog.set_level(logging.INFO, logger="app.tasks")

    @logged(logger=option)
    def work() -> None: ...

    work()
    assert [r.name for r in caplog.records] == ["app.tasks", "app.tasks"]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"logger": 42}, TypeError, r"logger=\.\.\."),
        ({"level": "LOUD"}, ValueError, r"level=\.\.\."),
        ({"level": True}, TypeError, r"level=\.\.\."),
        ({"level": 1.5}, TypeError, r"level=\.\.\."),
        ({"redact": "token", "log_args": True}, TypeError, r"redact=\('password',\)"),
        ({"redact": 5, "log_args": True}, TypeError, r"redact=\.\.\."),
        ({"redact": [1], "log_args": True}, TypeError, r"redact=\.\.\."),
        ({"redact": ("token",)}, ValueError, "log_args=True"),
    ],
)
def test_bad_options_fail_at_decoration(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad options raise when the decorator is built, naming the option."""
    with pytest.raises(error, match=match):
        logged(**options)


def test_redacting_an_unknown_parameter_fails() -> None:
    """A misspelt redact name fails at decoration, before it can leak a value."""

    def charge(email: str, token: str) -> None: ...

    with pytest.raises(ValueError, match=r"\['tokn'\]"):
        logged(log_args=True, redact=("tokn",))(charge)


def test_redacting_a_kwargs_key_is_allowed() -> None:
    """A redact name may be a **kwargs key, which the signature cannot list."""

    def call(url: str, **headers: str) -> None: ...

    logged(log_args=True, redact=("authorization",))(call)


@pytest.mark.parametrize("log_args", [False, True])
def test_non_functions_are_refused(log_args: bool) -> None:
    """A logger or a class passed where the function goes fails with a clear fix."""
    with pytest.raises(TypeError, match="pass options as keywords"):
        logged(log_args=log_args)(logging.getLogger("bgtasks"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not classes"):
        logged(_FakeTask)


def _sync_task(email: str, count: int = 1) -> str:
    """Send something."""
    return email * count


async def _async_task(email: str, count: int = 1) -> str:
    """Send something, asynchronously."""
    return email * count


@pytest.mark.parametrize("func", [_sync_task, _async_task])
@pytest.mark.parametrize(
    "decorate",
    [logged, logged(), logged(suppress=True)],
    ids=["bare", "empty", "options"],
)
def test_wrapper_kind_and_metadata_are_kept(
    func: Callable[..., Any], decorate: Callable[..., Any]
) -> None:
    """Sync stays sync, async stays async, name, doc and signature are kept."""
    wrapped = decorate(func)
    assert inspect.iscoroutinefunction(func) == inspect.iscoroutinefunction(wrapped)
    assert (func.__name__, func.__doc__) == (wrapped.__name__, wrapped.__doc__)
    assert wrapped.__wrapped__ is func
    assert inspect.signature(func) == inspect.signature(wrapped)


def _app_with_tasks(first: Callable[[], Any], second: Callable[[], Any]) -> Starlette:
    async def register(request: Request) -> JSONResponse:
        tasks = BackgroundTasks()
        tasks.add_task(first)
        tasks.add_task(second)
        return JSONResponse({"status": "registered"}, background=tasks)

    return Starlette(routes=[Route("/users", register, methods=["POST"])])


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_suppress_lets_starlette_run_the_next_background_task(
    backend_name: Literal["asyncio", "trio"],
    kind: str,
    records: list[logging.LogRecord],
) -> None:
    """In Starlette BackgroundTasks, a suppressed failure lets the next task run."""
    ran: list[str] = []

    def second() -> None:
        ran.append("second")

    def broken_sync() -> None:
        raise ConnectionError("SMTP down")

    async def broken_async() -> None:
        raise ConnectionError("SMTP down")

    broken = broken_sync if kind == "sync" else broken_async
    app = _app_with_tasks(logged(suppress=True)(broken), second)
    with TestClient(app, backend=backend_name) as client:
        assert client.post("/users").status_code == 200
    assert ran == ["second"]
    assert vars(records[-1])["outcome"] == "failed"


def test_without_suppress_starlette_stops_at_the_failure(
    backend_name: Literal["asyncio", "trio"],
) -> None:
    """The control case: a task that raises stops the response's remaining tasks."""
    ran: list[str] = []

    @logged
    def broken() -> None:
        raise ConnectionError("SMTP down")

    app = _app_with_tasks(broken, lambda: ran.append("second"))
    with (
        TestClient(app, backend=backend_name) as client,
        pytest.raises(ConnectionError),
    ):
        client.post("/users")
    assert ran == []


def _bare(x: int) -> int:
    return x


async def _abare(x: int) -> int:
    return x


@pytest.mark.parametrize("target", [_bare, _abare], ids=["sync", "async"])
def test_every_logged_wrapper_carries_the_marker_through_stacking(
    target: Callable[[int], Any],
) -> None:
    """The TaskManager's marker is on @logged and on any decorator stacked above it."""
    stacks = {
        "logged": logged(target),
        "logged(...)": logged(level="DEBUG")(target),
        "retry above": retry()(logged(target)),
        "idempotent above": idempotent(key="{x}")(logged(target)),
        "timeout above": timeout(5)(logged(target)),
        "logged above all": logged(retry()(timeout(5)(target))),
    }
    assert LOGGED_MARKER == "__bgtasks_logged__"
    assert {
        name: getattr(f, LOGGED_MARKER, False) for name, f in stacks.items()
    } == dict.fromkeys(stacks, True)
    assert not hasattr(retry()(timeout(5)(target)), LOGGED_MARKER)
    assert not hasattr(target, LOGGED_MARKER)


@pytest.mark.anyio
async def test_failure_record_of_a_managed_task_has_its_id_and_error_type(
    records: list[logging.LogRecord],
) -> None:
    """Inside a TaskManager task, the one failure record carries task_id and type."""

    @logged
    async def boom() -> None:
        raise ConnectionError(SECRET_EMAIL)

    @logged
    def sync_boom() -> None:
        raise ConnectionError(SECRET_EMAIL)

    async with TaskManager() as manager:
        handles = [manager.spawn(boom), manager.spawn(sync_boom)]
        for handle in handles:
            await handle.wait(timeout=5)
    failures = [r for r in records if getattr(r, "outcome", None) == "failed"]
    assert sorted(
        (vars(r)["task_id"], vars(r)["error_type"], r.exc_info is not None)
        for r in failures
    ) == sorted((h.id, "ConnectionError", True) for h in handles)
    assert all(r.getMessage().endswith("with ConnectionError") for r in failures)
    assert all(SECRET_EMAIL not in r.getMessage() for r in failures)
