"""bgtasks.testing, used the way a user's test suite uses it."""

from __future__ import annotations

import contextvars
import threading
import warnings
from typing import Literal

import anyio
import pytest

from bgtasks import MemoryStore, backoff, retry
from bgtasks._idempotency.decorator import default_store
from bgtasks._testing import instant_var
from bgtasks.testing import RetryRecorder, instant_retries

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi import BackgroundTasks, FastAPI
    from fastapi.testclient import TestClient

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.anyio


class Mailbox:
    """A fake SMTP server that refuses the first ``failures`` connections."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.sent: list[str] = []

    def deliver(self, to: str) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("SMTP server refused the connection")
        self.sent.append(to)


def test_waits_are_skipped() -> None:
    """An hour-long backoff does not wait under instant_retries."""
    mailbox = Mailbox(failures=2)

    @retry(backoff=3600)
    def send(to: str) -> None:
        mailbox.deliver(to)

    with instant_retries():
        send("a@example.com")
    assert mailbox.sent == ["a@example.com"]


async def test_async_waits_are_skipped() -> None:
    """Async retries skip their waits too."""
    mailbox = Mailbox(failures=2)

    @retry(backoff=3600)
    async def send(to: str) -> None:
        mailbox.deliver(to)

    with instant_retries():
        await send("a@example.com")
    assert mailbox.sent == ["a@example.com"]


def test_each_retry_is_recorded() -> None:
    """The recorder holds name, attempt, exception and would-be delay per retry."""
    mailbox = Mailbox(failures=2)

    @retry(backoff=backoff.exponential(initial=1, jitter="none"))
    def send(to: str) -> None:
        mailbox.deliver(to)

    with instant_retries() as recorder:
        send("a@example.com")
    assert recorder.attempts == [1, 2]
    assert recorder.delays == [1.0, 2.0]
    first = recorder.events[0]
    assert first.name.endswith("send")
    assert isinstance(first.exception, ConnectionError)


def test_delays_are_exact_by_default() -> None:
    """instant_retries() records the default exponential delays without jitter."""

    @retry(attempts=4)
    def send() -> None:
        raise ConnectionError

    with instant_retries() as recorder, pytest.raises(ConnectionError):
        send()
    assert recorder.delays == [0.1, 0.2, 0.4]


def test_jitter_true_records_the_jittered_delays() -> None:
    """instant_retries(jitter=True) keeps the random part of the delays."""

    @retry(attempts=30)
    def send() -> None:
        raise ConnectionError

    with instant_retries(jitter=True) as recorder, pytest.raises(ConnectionError):
        send()
    assert len(set(recorder.delays)) > 1
    assert all(0 <= d <= 10.0 for d in recorder.delays)


def test_skipped_waits_count_toward_the_deadline() -> None:
    """The deadline sees virtual time: two hour-long waits do not fit in 1.5 hours."""

    @retry(attempts=10, backoff=3600, deadline=5400)
    def send() -> None:
        raise ConnectionError

    with instant_retries() as recorder, pytest.raises(ConnectionError):
        send()
    assert recorder.delays == [3600.0]
    assert 3600 <= recorder.events[-1].elapsed + recorder.delays[-1] <= 5400


def test_the_last_failed_attempt_is_not_recorded() -> None:
    """Only retries are events: three attempts that all fail record two."""

    @retry(attempts=3)
    def send() -> None:
        raise ConnectionError

    with instant_retries() as recorder, pytest.raises(ConnectionError):
        send()
    assert recorder.attempts == [1, 2]


def test_the_switch_ends_with_the_block() -> None:
    """After the block, retries wait again and nothing more is recorded."""
    with instant_retries() as recorder:
        assert recorder is instant_var.get()
    assert instant_var.get() is None


def test_blocks_nest_and_the_innermost_records() -> None:
    """An inner block records its retries; the outer one resumes after it."""
    mailbox = Mailbox(failures=2)

    @retry()
    def send() -> None:
        mailbox.deliver("x")

    with instant_retries() as outer:
        with instant_retries() as inner:
            send()
        mailbox.failures = 1
        send()
    assert inner.attempts == [1, 2]
    assert outer.attempts == [1]


async def test_other_tasks_are_not_affected() -> None:
    """A task started outside the block neither skips its wait nor records."""
    outside_waiting = anyio.Event()

    @retry(backoff=3600, on_retry=lambda event: outside_waiting.set())
    async def outside() -> None:
        raise ConnectionError

    mailbox = Mailbox(failures=1)

    @retry(backoff=3600)
    async def inside() -> None:
        mailbox.deliver("x")

    async with anyio.create_task_group() as tg:
        tg.start_soon(outside)  # started before the block: really waits an hour
        await outside_waiting.wait()
        with instant_retries() as recorder:
            await inside()
        tg.cancel_scope.cancel()
    assert [e.name.rsplit(".", 1)[-1] for e in recorder.events] == ["inside"]


async def test_worker_threads_inherit_the_switch() -> None:
    """A sync task sent to a worker thread (as Starlette does) skips its waits."""
    mailbox = Mailbox(failures=1)

    @retry(backoff=3600)
    def send() -> None:
        mailbox.deliver("x")

    with instant_retries() as recorder:
        await anyio.to_thread.run_sync(send)
    assert recorder.attempts == [1]


def test_threads_record_into_the_same_recorder() -> None:
    """Concurrent calls in threads started with the context all get recorded."""

    @retry(attempts=2)
    def send() -> None:
        raise ConnectionError

    def call() -> None:
        with pytest.raises(ConnectionError):
            send()

    with instant_retries() as recorder:
        threads = [
            threading.Thread(target=contextvars.copy_context().run, args=(call,))
            for _ in range(20)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(recorder.events) == 20


def test_recorder_clear_and_repr() -> None:
    """clear() forgets the events; repr shows the count and the jitter setting."""
    with instant_retries(jitter=True) as recorder:

        @retry(attempts=2)
        def send() -> None:
            raise ConnectionError

        with pytest.raises(ConnectionError):
            send()
        assert repr(recorder) == "<RetryRecorder events=1 jitter=True>"
        recorder.clear()
    assert recorder.events == []


def test_fixture_in_a_sync_test(instant_retries: RetryRecorder) -> None:
    """The pytest fixture from the bgtasks plugin works in a plain test."""
    mailbox = Mailbox(failures=2)

    @retry(backoff=3600)
    def send() -> None:
        mailbox.deliver("x")

    send()
    assert instant_retries.attempts == [1, 2]


async def test_fixture_in_an_async_test(instant_retries: RetryRecorder) -> None:
    """The fixture also covers async tests on asyncio and trio."""
    mailbox = Mailbox(failures=1)

    @retry(backoff=3600)
    async def send() -> None:
        mailbox.deliver("x")

    await send()
    assert instant_retries.attempts == [1]


def test_plugin_in_a_users_project(pytester: pytest.Pytester) -> None:
    """A fresh pytest run of a user's project gets the fixture from the entry point."""
    pytester.makepyfile(
        test_user="""
        from bgtasks import retry

        calls = []

        @retry(backoff=3600)
        def send_welcome_email(to):
            calls.append(to)
            if len(calls) < 3:
                raise ConnectionError("SMTP down")

        def test_send(instant_retries):
            send_welcome_email("a@example.com")
            assert len(calls) == 3
            assert instant_retries.attempts == [1, 2]
            assert all(d == 3600 for d in instant_retries.delays)
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_testclient_background_tasks_skip_their_waits(
    backend: Literal["asyncio", "trio"], instant_retries: RetryRecorder
) -> None:
    """Background tasks of an app called through TestClient see the switch."""
    mailbox = Mailbox(failures=2)

    @retry(backoff=3600)
    def send_sync(to: str) -> None:
        mailbox.deliver(to)

    @retry(backoff=3600)
    async def send_async(to: str) -> None:
        mailbox.deliver(to)

    app = FastAPI()

    @app.post("/signup")
    def signup(tasks: BackgroundTasks) -> dict[str, bool]:
        tasks.add_task(send_sync, "sync@example.com")
        tasks.add_task(send_async, "async@example.com")
        return {"ok": True}

    with TestClient(app, backend=backend) as client:
        assert client.post("/signup").status_code == 200
    assert mailbox.sent == ["sync@example.com", "async@example.com"]
    assert instant_retries.attempts == [1, 2]


def test_fresh_idempotency_store_empties_the_default_store() -> None:
    """A key completed before the block runs again inside it, and is gone after."""
    from bgtasks import idempotent
    from bgtasks.testing import fresh_idempotency_store

    calls: list[int] = []

    @idempotent(key="fresh:{n}")
    def work(n: int) -> int:
        calls.append(n)
        return n

    work(1)
    with fresh_idempotency_store() as store:
        assert len(store) == 0
        work(1)
        work(1)
        assert len(store) == 1
    assert len(store) == 0
    assert calls == [1, 1]


def test_idempotency_store_fixture(idempotency_store: MemoryStore) -> None:
    """The plugin's fixture yields the empty default store that idempotent uses."""
    from bgtasks import idempotent

    @idempotent(key="fixture:{n}")
    def work(n: int) -> int:
        return n * 2

    assert len(idempotency_store) == 0
    assert work(3) == 6
    assert len(idempotency_store) == 1


IDEMPOTENT_USER_TESTS = """
import pytest
from bgtasks import idempotent

MARKER
sent = []

@idempotent(key="welcome:{email}")
def send_welcome(email):
    sent.append(email)
    return len(sent)

def test_first_signup():
    assert send_welcome("ada@example.com") == 1

def test_second_signup():
    assert send_welcome("ada@example.com") == 2
"""


def test_each_users_test_gets_an_empty_default_store(pytester: pytest.Pytester) -> None:
    """Two tests making the same idempotent call both run it: nothing replays."""
    pytester.makepyfile(test_user=IDEMPOTENT_USER_TESTS.replace("MARKER", ""))
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    result.assert_outcomes(passed=2)


def test_marker_keeps_the_previous_tests_results(pytester: pytest.Pytester) -> None:
    """Tests marked bgtasks_keep_idempotency share the default store's results."""
    marker = "pytestmark = pytest.mark.bgtasks_keep_idempotency"
    pytester.makepyfile(test_user=IDEMPOTENT_USER_TESTS.replace("MARKER", marker))
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-markers")
    # Replayed: send_welcome returns the first test's 1, not 2.
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])


def test_ini_option_keeps_results_in_the_whole_suite(pytester: pytest.Pytester) -> None:
    """``bgtasks_fresh_idempotency = false`` turns the clean store off everywhere."""
    pytester.makeini("[pytest]\nbgtasks_fresh_idempotency = false\n")
    pytester.makepyfile(test_user=IDEMPOTENT_USER_TESTS.replace("MARKER", ""))
    result = pytester.runpytest("-p", "no:cacheprovider", "--strict-config")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*assert 1 == 2*"])


def test_store_emptied_after_the_test(pytester: pytest.Pytester) -> None:
    """What a user's test records is gone once it ends."""
    pytester.makepyfile(test_user=IDEMPOTENT_USER_TESTS.replace("MARKER", ""))
    # In process: the user's tests share this process's default store.
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    assert len(default_store()) == 0
