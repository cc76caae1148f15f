"""@idempotent runs a task once per key, and duplicates get the recorded result."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import inspect
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest

from bgtasks import MemoryStore, TaskManager, TaskState, idempotent, timeout
from bgtasks._clock import ManualClock
from bgtasks._idempotency.decorator import default_store
from bgtasks._idempotency.keys import make_fingerprint
from bgtasks._idempotency.policy import _reseed_owners, new_owner
from bgtasks._idempotency.stores import ClaimResult, IdempotencyRecord
from bgtasks._idempotency.waiting import LoopWaiters, board
from bgtasks.exceptions import DuplicateTaskError, IdempotencyConflictError


@dataclasses.dataclass(frozen=True)
class Model:
    """Stands in for a user's result model."""

    name: str


@pytest.fixture
def store() -> MemoryStore:
    """A fresh store per test, so tests never share keys."""
    return MemoryStore()


def until(predicate: Callable[[], bool]) -> None:
    """Block until ``predicate()`` holds (coordination, not a timing assertion)."""
    deadline = time.monotonic() + 5
    while not predicate():
        assert time.monotonic() < deadline, "condition never came true"
        time.sleep(0.001)


async def until_async(predicate: Callable[[], bool]) -> None:
    """Yield to the loop until ``predicate()`` holds."""
    with anyio.fail_after(5):
        while not predicate():
            await anyio.sleep(0.001)


def start_thread(target: Callable[[], object]) -> threading.Thread:
    """Run ``target`` in a new thread."""
    thread = threading.Thread(target=target)
    thread.start()
    return thread


# --- the basic contract -------------------------------------------------------


@pytest.mark.parametrize("value", [0, False, None, "", (), (1, "a"), Model("m")])
def test_recorded_result_is_the_same_object(store: MemoryStore, value: object) -> None:
    """A repeated call returns the first call's result object without running."""
    runs: list[int] = []

    @idempotent(key="k", store=store)
    def task() -> object:
        runs.append(1)
        return value

    assert task() is value
    assert task() is value
    assert runs == [1]


@pytest.mark.anyio
async def test_async_task_stays_async_and_replays(store: MemoryStore) -> None:
    """An async def stays a coroutine function, runs once, and replays its result."""
    runs: list[str] = []

    @idempotent(key=lambda to: f"mail:{to}", store=store)
    async def send(to: str) -> tuple[str, int]:
        runs.append(to)
        await anyio.sleep(0)
        return (to, len(runs))

    assert inspect.iscoroutinefunction(send)
    assert await send("a") == ("a", 1)
    assert await send(to="a") == ("a", 1)
    assert await send("b") == ("b", 2)
    assert runs == ["a", "b"]


def test_wrapper_keeps_metadata(store: MemoryStore) -> None:
    """The wrapper keeps name, docstring and ``__wrapped__``."""

    def task(x: int) -> int:
        """Doc."""
        return x

    wrapped = idempotent(key="{x}", store=store)(task)
    assert wrapped.__wrapped__ is task  # type: ignore[attr-defined]
    assert wrapped.__name__ == "task"
    assert wrapped.__doc__ == "Doc."


def test_template_key_binds_positional_keyword_and_default(store: MemoryStore) -> None:
    """Positional, keyword and defaulted arguments give the same template key."""
    runs: list[tuple[int, int, str]] = []

    @idempotent(key="{a}-{b}-{c}", namespace="ns", store=store)
    def task(a: int, b: int = 2, *, c: str = "x") -> int:
        runs.append((a, b, c))
        return len(runs)

    assert task(1) == 1
    assert task(1, 2) == 1
    assert task(a=1, b=2, c="x") == 1
    assert task(1, 3) == 2
    assert runs == [(1, 2, "x"), (1, 3, "x")]
    assert IdempotencyRecord(1) == store.get_now("ns:1-2-x")


def test_template_attribute_index_conversion_and_variadics(store: MemoryStore) -> None:
    """Templates may use attributes, indexes, conversions, specs and *args/**kwargs."""

    @idempotent(key="{m.name}/{xs[0]}/{n:03d}/{m!r}", namespace="a", store=store)
    def first(m: Model, xs: list[int], n: int) -> str:
        return "first"

    @idempotent(key="{args[0]}:{kwargs[tag]}", namespace="b", store=store)
    def second(*args: int, **kwargs: str) -> str:
        return "second"

    @idempotent(key="{x!s:>3}|{y!a}", namespace="c", store=store)
    def third(x: int, /, y: str) -> str:
        return "third"

    first(Model("m"), [7], 5)
    first(Model("m"), xs=[7], n=5)
    second(4, tag="t")
    third(1, "é")
    assert store.get_now("a:m/7/005/Model(name='m')") is not None
    assert store.get_now("b:4:t") is not None
    assert store.get_now("c:  1|'\\xe9'") is not None


def test_mapped_template_binds_keywords_and_defaults(store: MemoryStore) -> None:
    """Templates with attributes bind keyword and default arguments too."""

    @idempotent(key="{user.name}:{mode.name}", namespace="m", store=store)
    def task(user: Model, mode: Model = Model("fast")) -> int:
        return 1

    task(user=Model("ada"))
    assert store.get_now("m:ada:fast") is not None
    with pytest.raises(TypeError, match="missing argument 'user'"):
        task()  # type: ignore[call-arg]


def test_owner_tokens_are_unique_and_reseeded_after_fork() -> None:
    """Owner tokens never repeat, and a forked child gets a new prefix."""
    first, second = new_owner(), new_owner()
    assert first != second
    _reseed_owners()
    assert first.split("-")[0] != new_owner().split("-")[0]


def test_namespaces_default_to_the_function_and_can_be_shared(
    store: MemoryStore,
) -> None:
    """Keys are per function by default; an explicit namespace survives renames."""

    @idempotent(key="k", store=store)
    def one() -> str:
        return "one"

    @idempotent(key="k", store=store)
    def two() -> str:
        return "two"

    @idempotent(key="k", namespace="shared", store=store)
    def old_name() -> str:
        return "old"

    @idempotent(key="k", namespace="shared", store=store)
    def new_name() -> str:
        return "new"

    assert (one(), two()) == ("one", "two")
    assert (old_name(), new_name()) == ("old", "old")
    qualname = test_namespaces_default_to_the_function_and_can_be_shared.__qualname__
    assert store.get_now(f"{__name__}.{qualname}.<locals>.one:k") is not None


def test_partial_is_named_after_its_function(store: MemoryStore) -> None:
    """A decorated functools.partial gets the namespace of the function inside."""

    def greet(greeting: str, name: str) -> str:
        return f"{greeting} {name}"

    hello = idempotent(key="{name}", store=store)(functools.partial(greet, "hello"))
    assert hello("ada") == "hello ada"
    assert store.get_now(f"{__name__}.{greet.__qualname__}:ada") is not None


def test_default_store_is_shared_process_wide() -> None:
    """Without store=, every function uses the one process-wide MemoryStore."""

    @idempotent(key="k", namespace="bgtasks-test-default")
    def task() -> int:
        return 42

    try:
        assert task() == 42
        assert IdempotencyRecord(42) == default_store().get_now(
            "bgtasks-test-default:k"
        )
    finally:
        default_store().forget_now("bgtasks-test-default:k")


def test_ttl_expiry_runs_again(store: MemoryStore) -> None:
    """After ``ttl`` seconds by the store's clock, the next call runs again."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    runs: list[int] = []

    @idempotent(key="k", ttl=timedelta(minutes=1), store=store)
    def task() -> int:
        runs.append(1)
        return len(runs)

    assert (task(), task()) == (1, 1)
    clock.advance(60)
    assert (task(), task()) == (2, 2)


# --- failures -----------------------------------------------------------------


def test_failure_releases_and_propagates_unchanged(store: MemoryStore) -> None:
    """The exception propagates as raised and the next call runs again."""
    error = RuntimeError("smtp down")
    outcomes: list[object] = [error, "sent"]

    @idempotent(key="k", store=store)
    def task() -> object:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    with pytest.raises(RuntimeError) as caught:
        task()
    assert caught.value is error
    assert task() == "sent"
    assert task() == "sent"


def test_recorded_errors_replay_the_same_exception(store: MemoryStore) -> None:
    """A listed exception is the recorded outcome; later calls re-raise it, not run."""
    runs: list[int] = []

    class CardDeclinedError(Exception):
        pass

    @idempotent(key="k", store=store, record_errors=CardDeclinedError)
    def charge() -> None:
        runs.append(1)
        raise CardDeclinedError("declined")

    with pytest.raises(CardDeclinedError) as first:
        charge()
    depths = []
    for _ in range(3):
        with pytest.raises(CardDeclinedError) as again:
            charge()
        # A fresh copy each time: same type and args, never the shared instance.
        assert again.value is not first.value
        assert again.value.args == first.value.args == ("declined",)
        depths.append(len(again.traceback))
    assert runs == [1]
    assert len(set(depths)) == 1, "the traceback must not grow with each replay"


def test_a_recorded_error_keeps_no_frames_alive(store: MemoryStore) -> None:
    """The store keeps a copy of a recorded error, not its traceback's frames."""

    class Payload:
        pass

    class CardDeclinedError(Exception):
        pass

    @idempotent(key="k", store=store, record_errors=CardDeclinedError)
    def charge(payload: Payload) -> None:
        raise CardDeclinedError("declined")

    payload = Payload()
    ref = weakref.ref(payload)
    with pytest.raises(CardDeclinedError):
        charge(payload)
    del payload
    gc.collect()
    assert ref() is None


def test_an_uncopyable_recorded_error_is_replayed_as_is(store: MemoryStore) -> None:
    """An error its constructor cannot rebuild is kept, with a fresh traceback."""

    class RichError(Exception):
        def __init__(self, code: int, reason: str) -> None:
            super().__init__(f"{code}: {reason}")

    @idempotent(key="k", store=store, record_errors=RichError)
    def call() -> None:
        raise RichError(402, "declined")

    with pytest.raises(RichError) as first:
        call()
    with pytest.raises(RichError) as again:
        call()
    assert again.value is first.value


def test_unlisted_errors_are_not_recorded(store: MemoryStore) -> None:
    """With record_errors set, other exceptions still release the key."""
    runs: list[int] = []

    @idempotent(key="k", store=store, record_errors=(KeyError, IndexError))
    def task() -> int:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("transient")
        return len(runs)

    with pytest.raises(ValueError, match="transient"):
        task()
    assert (task(), task()) == (2, 2)


# --- fingerprints -------------------------------------------------------------


def test_fingerprint_conflict_on_a_completed_key(store: MemoryStore) -> None:
    """The same key with other arguments raises instead of returning another result."""

    @idempotent(key="{order}", store=store, fingerprint=True)
    def charge(order: str, amount: int, currency: str = "EUR") -> str:
        return f"{order}:{amount}{currency}"

    assert charge("o1", 5) == "o1:5EUR"
    assert charge(order="o1", amount=5, currency="EUR") == "o1:5EUR"
    with pytest.raises(IdempotencyConflictError, match="different arguments"):
        charge("o1", 6)


def test_custom_fingerprint(store: MemoryStore) -> None:
    """A fingerprint callable decides which arguments must match."""

    @idempotent(
        key="{order}", store=store, fingerprint=lambda order, amount, note: str(amount)
    )
    def charge(order: str, amount: int, note: str) -> str:
        return note

    assert charge("o1", 5, "first") == "first"
    assert charge("o1", 5, "note ignored") == "first"
    with pytest.raises(IdempotencyConflictError):
        charge("o1", 6, "first")


@pytest.mark.anyio
async def test_fingerprint_conflict_with_a_running_call(store: MemoryStore) -> None:
    """A mismatching duplicate fails at once instead of waiting for the running call."""
    gate = anyio.Event()

    @idempotent(key="{order}", namespace="t", store=store, fingerprint=True)
    async def charge(order: str, amount: int) -> int:
        await gate.wait()
        return amount

    async with anyio.create_task_group() as tg:
        tg.start_soon(charge, "o1", 5)
        await until_async(lambda: len(store) == 1)
        with pytest.raises(IdempotencyConflictError):
            await charge("o1", 6)
        gate.set()
    assert await charge("o1", 5) == 5


# --- bad keys claim nothing ---------------------------------------------------


def test_key_errors_raise_before_claiming(store: MemoryStore) -> None:
    """Key and fingerprint failures raise clear errors, chained, and claim nothing."""
    boom = KeyError("tenant")

    def raising_key(x: object) -> str:
        raise boom

    @idempotent(key=raising_key, store=store)
    def a(x: object) -> None: ...

    @idempotent(key=lambda x: 42, store=store)  # type: ignore[arg-type,return-value]
    def b(x: object) -> None: ...

    @idempotent(key="{x:d}", store=store)
    def c(x: object) -> None: ...

    @idempotent(key="{x.missing}", store=store)
    def d(x: object) -> None: ...

    @idempotent(key="k", store=store, fingerprint=lambda x: None)  # type: ignore[arg-type,return-value]
    def e(x: object) -> None: ...

    @idempotent(key="k", store=store, fingerprint=lambda x: 1 / 0)  # type: ignore[arg-type,return-value]
    def f(x: object) -> None: ...

    class BadRepr:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    @idempotent(key="k", store=store, fingerprint=True)
    def g(x: object) -> None: ...

    with pytest.raises(
        ValueError, match=r"key function of .*a\(\) raised KeyError"
    ) as e1:
        a(1)
    assert e1.value.__cause__ is boom
    with pytest.raises(TypeError, match="must return a str, got int"):
        b(1)
    with pytest.raises(ValueError, match="could not format") as e2:
        c("text")
    assert isinstance(e2.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="AttributeError"):
        d(1)
    with pytest.raises(TypeError, match="missing argument 'x'"):
        c()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match=r"fingerprint function .* must return a str"):
        e(1)
    with pytest.raises(
        ValueError, match=r"fingerprint function .* raised ZeroDivisionError"
    ):
        f(1)
    with pytest.raises(ValueError, match="repr raised RuntimeError"):
        g(BadRepr())
    with pytest.raises(TypeError, match="cannot fingerprint"):
        g(1, 2)  # type: ignore[call-arg]
    assert len(store) == 0


SECRET = "alice@example.com"


class LeakyFormat:
    """A value whose __format__ and __repr__ raise with a secret in the message."""

    def __format__(self, spec: str) -> str:
        raise ValueError(SECRET)

    def __repr__(self) -> str:
        raise RuntimeError(SECRET)


def test_key_errors_name_the_function_and_type_never_the_message(
    store: MemoryStore,
) -> None:
    """A failing key, fingerprint or format keeps its message out of bgtasks' error."""
    leak = KeyError(SECRET)

    def key_of(user: object) -> str:
        raise leak

    def fingerprint_of(user: object) -> str:
        raise ValueError(SECRET)

    @idempotent(key=key_of, store=store)
    def by_callable(user: object) -> None: ...

    @idempotent(key="k", store=store, fingerprint=fingerprint_of)
    def by_fingerprint(user: object) -> None: ...

    @idempotent(key="k", store=store, fingerprint=True)
    def by_repr(user: object) -> None: ...

    @idempotent(key="{user}", store=store)
    def by_template(user: object) -> None: ...

    @idempotent(key="{user:>3}", store=store)
    def by_mapped_template(user: object) -> None: ...

    calls = [by_callable, by_fingerprint, by_repr, by_template, by_mapped_template]
    for call, (name, kind) in zip(
        calls,
        [
            ("key function of .*by_callable", "KeyError"),
            ("fingerprint function of .*by_fingerprint", "ValueError"),
            ("by_repr.*repr raised", "RuntimeError"),
            ("by_template", "ValueError"),
            ("by_mapped_template", "ValueError"),
        ],
        strict=True,
    ):
        with pytest.raises(ValueError, match=f"{name}.*{kind}") as caught:
            call(LeakyFormat())
        assert SECRET not in str(caught.value)
        assert caught.value.__cause__ is not None
        assert SECRET in str(caught.value.__cause__)
    assert len(store) == 0


def test_variadic_template_reports_a_bad_call(store: MemoryStore) -> None:
    """A template over *args needs a full binding; a bad call raises before claiming."""

    @idempotent(key="{args}", store=store)
    def task(first: int, *args: int) -> None: ...

    with pytest.raises(TypeError, match="cannot build the idempotency key"):
        task()  # type: ignore[call-arg]

    @idempotent(key="{kwargs[missing]}", store=store)
    def other(**kwargs: int) -> None: ...

    with pytest.raises(ValueError, match="could not format"):
        other(a=1)
    assert len(store) == 0


# --- decoration-time validation -----------------------------------------------


def _task(email: str, username: str = "") -> None: ...


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, TypeError, "key=...\\) is required"),
        ({"key": 3}, TypeError, "str template or a callable"),
        ({"key": "k", "on_duplicate": "ignore"}, ValueError, "on_duplicate='ignore'"),
        ({"key": "k", "ttl": 0}, ValueError, r"ttl=\.\.\.\) must be positive seconds"),
        ({"key": "k", "ttl": -1.5}, ValueError, "ttl"),
        ({"key": "k", "ttl": True}, TypeError, r"ttl=\.\.\.\) takes a number of"),
        ({"key": "k", "ttl": "1h"}, TypeError, "ttl"),
        ({"key": "k", "lease": timedelta(0)}, ValueError, "lease"),
        ({"key": "k", "lease": float("inf")}, ValueError, "lease.*positive and finite"),
        ({"key": "k", "wait_timeout": 0}, ValueError, "wait_timeout"),
        (
            {"key": "k", "on_duplicate": "skip", "wait_timeout": 1},
            ValueError,
            "only applies",
        ),
        ({"key": "k", "namespace": ""}, TypeError, "namespace"),
        ({"key": "k", "namespace": 5}, TypeError, "namespace"),
        ({"key": "k", "store": {}}, TypeError, "must implement IdempotencyStore"),
        ({"key": "k", "fingerprint": "yes"}, TypeError, "fingerprint"),
        ({"key": "k", "record_errors": KeyboardInterrupt}, TypeError, "never recorded"),
        ({"key": "k", "record_errors": (ValueError, "x")}, TypeError, "record_errors"),
    ],
)
def test_bad_options_fail_at_decoration(
    kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option fails before any call, naming the option."""
    with pytest.raises(error, match=match):
        idempotent(**kwargs)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("welcome:{mail}", "names 'mail', which is not an argument of _task"),
        ("{}", "positional field"),
        ("{0}", "positional field"),
        ("{email", "not a valid str.format template"),
        ("{email!x}", "unknown conversion"),
        ("{email:>{width}}", "names 'width'"),
    ],
)
def test_bad_templates_fail_at_decoration(template: str, match: str) -> None:
    """A template must name arguments of the function; the message says which not."""
    with pytest.raises(ValueError, match=match):
        idempotent(key=template)(_task)


def test_nested_spec_fields_are_allowed() -> None:
    """A field inside a format spec is fine when it names an argument."""

    def pad(text: str, width: int) -> str:
        return text

    store = MemoryStore()
    idempotent(key="{text:>{width}}", namespace="p", store=store)(pad)("a", 3)
    assert store.get_now("p:  a") is not None


def test_bare_decorator_and_bad_targets_are_refused() -> None:
    """@idempotent without parentheses, on a class, or unsignable: a clear TypeError."""
    with pytest.raises(TypeError, match=r"with\s+parentheses"):
        idempotent(_task)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="not classes"):
        idempotent(key="k")(Model)
    with pytest.raises(TypeError, match="cannot read the signature"):
        idempotent(key="{x}")(max)
    assert (
        idempotent(key=lambda *a: "k")(max)(1, 2) == 2
    )  # callable keys need no signature


# --- duplicates in threads ----------------------------------------------------


def test_twenty_threads_run_the_body_once(store: MemoryStore) -> None:
    """Concurrent sync calls from 20 threads: one runs, 19 wait and get its result."""
    gate = threading.Event()
    runs: list[int] = []
    result = Model("once")
    results: list[object] = []

    @idempotent(key="k", namespace="t", store=store)
    def task() -> Model:
        gate.wait(5)
        runs.append(1)
        return result

    threads = [start_thread(lambda: results.append(task())) for _ in range(20)]
    until(lambda: board.waiting(store, "t:k") == 19)
    gate.set()
    for thread in threads:
        thread.join()
    assert runs == [1]
    assert [result] * 20 == results
    assert all(r is result for r in results)
    assert board.waiting(store, "t:k") == 0


def test_sync_skip_raise_and_bounded_wait(store: MemoryStore) -> None:
    """While a call runs: skip returns None, raise raises, a bounded wait gives up."""
    gate = threading.Event()

    def body() -> str:
        gate.wait(5)
        return "done"

    wait = idempotent(key="k", namespace="t", store=store)(body)
    skip = idempotent(key="k", namespace="t", store=store, on_duplicate="skip")(body)
    fail = idempotent(key="k", namespace="t", store=store, on_duplicate="raise")(body)
    short = idempotent(key="k", namespace="t", store=store, wait_timeout=0.05)(body)

    owner = start_thread(wait)
    until(lambda: len(store) == 1)
    assert skip() is None
    with pytest.raises(DuplicateTaskError, match="already running"):
        fail()
    with pytest.raises(DuplicateTaskError, match=r"gave up after waiting 0\.05s"):
        short()
    gate.set()
    owner.join()
    assert (skip(), fail(), short()) == ("done", "done", "done")


def test_sync_waiter_takes_over_after_a_failure(store: MemoryStore) -> None:
    """When the running call fails, a waiting thread claims the key and runs."""
    gate = threading.Event()
    runs: list[str] = []
    results: list[object] = []

    @idempotent(key="k", namespace="t", store=store)
    def task(who: str) -> str:
        runs.append(who)
        if who == "owner":
            gate.wait(5)
            raise RuntimeError("boom")
        return who

    def owner() -> None:
        with pytest.raises(RuntimeError):
            task("owner")

    first = start_thread(owner)
    until(lambda: len(store) == 1)
    second = start_thread(lambda: results.append(task("waiter")))
    until(lambda: board.waiting(store, "t:k") == 1)
    gate.set()
    first.join()
    second.join()
    assert runs == ["owner", "waiter"]
    assert results == ["waiter"]


def test_expired_lease_is_taken_over_by_a_waiter(store: MemoryStore) -> None:
    """A call outliving its lease loses the key to a waiter; its late result is lost."""
    gate = threading.Event()
    results: list[str] = []

    @idempotent(key="k", namespace="t", store=store, lease=0.05)
    def task(who: str) -> str:
        if who == "slow":
            gate.wait(5)
        return who

    slow = start_thread(lambda: results.append(task("slow")))
    until(lambda: len(store) == 1)
    assert task("fast") == "fast"
    gate.set()
    slow.join()
    assert results == ["slow"]
    assert IdempotencyRecord("fast") == store.get_now("t:k")


# --- duplicates on the event loop ---------------------------------------------


@pytest.mark.anyio
async def test_thousand_concurrent_calls_run_once(store: MemoryStore) -> None:
    """1,000 concurrent calls of one key run the body once; all get its result."""
    runs: list[int] = []
    results: list[object] = []
    value = ("result", 0)

    @idempotent(key="job:{n}", store=store)
    async def task(n: int) -> tuple[str, int]:
        runs.append(n)
        await anyio.sleep(0.01)
        return value

    async def call() -> None:
        results.append(await task(7))

    async with anyio.create_task_group() as tg:
        for _ in range(1000):
            tg.start_soon(call)
    assert runs == [7]
    assert len(results) == 1000
    assert all(r is value for r in results)


@pytest.mark.anyio
async def test_async_skip_raise_and_bounded_wait(store: MemoryStore) -> None:
    """Each on_duplicate mode behaves as documented for async duplicates."""
    gate = anyio.Event()

    async def body() -> str:
        await gate.wait()
        return "done"

    wait = idempotent(key="k", namespace="t", store=store)(body)
    skip = idempotent(key="k", namespace="t", store=store, on_duplicate="skip")(body)
    fail = idempotent(key="k", namespace="t", store=store, on_duplicate="raise")(body)
    short = idempotent(key="k", namespace="t", store=store, wait_timeout=0.05)(body)
    async with anyio.create_task_group() as tg:
        tg.start_soon(wait)
        await until_async(lambda: len(store) == 1)
        assert await skip() is None
        with pytest.raises(DuplicateTaskError):
            await fail()
        with pytest.raises(DuplicateTaskError, match="gave up"):
            await short()
        gate.set()
    assert (await skip(), await fail()) == ("done", "done")
    assert board.waiting(store, "t:k") == 0


@pytest.mark.anyio
async def test_failed_owner_hands_over_to_exactly_one_waiter(
    store: MemoryStore,
) -> None:
    """After the owner fails, one waiter runs and the others wait for it."""
    gate = anyio.Event()
    runs: list[int] = []
    running = 0
    results: list[object] = []

    @idempotent(key="k", namespace="t", store=store)
    async def task(n: int) -> str:
        nonlocal running
        running += 1
        assert running == 1, "two bodies ran at once"
        runs.append(n)
        try:
            if n == 0:
                await gate.wait()
                raise RuntimeError("first fails")
            await anyio.sleep(0.001)
            return f"ok from {n}"
        finally:
            running -= 1

    async def call(n: int) -> None:
        try:
            results.append(await task(n))
        except RuntimeError as exc:
            results.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, 0)
        await until_async(lambda: len(store) == 1)
        for n in range(1, 6):
            tg.start_soon(call, n)
        await until_async(lambda: board.waiting(store, "t:k") == 5)
        gate.set()
    assert len(runs) == 2
    assert sum(isinstance(r, RuntimeError) for r in results) == 1
    assert [f"ok from {runs[1]}"] * 5 == [r for r in results if isinstance(r, str)]


@pytest.mark.anyio
async def test_cancelled_owner_releases_the_key(store: MemoryStore) -> None:
    """Cancelling the running call releases its claim; a waiter takes over."""
    runs: list[str] = []

    @idempotent(key="k", namespace="t", store=store)
    async def task(who: str) -> str:
        runs.append(who)
        if who == "owner":
            await anyio.sleep_forever()
        return who

    results: list[str] = []

    async def waiter() -> None:
        results.append(await task("waiter"))

    owner = anyio.CancelScope()

    async def run_owner() -> None:
        with owner:
            await task("owner")

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_owner)
        await until_async(lambda: len(store) == 1)
        tg.start_soon(waiter)
        await until_async(lambda: board.waiting(store, "t:k") == 1)
        owner.cancel()
    assert owner.cancelled_caught
    assert runs == ["owner", "waiter"]
    assert results == ["waiter"]
    assert IdempotencyRecord("waiter") == store.get_now("t:k")


@pytest.mark.anyio
async def test_cancelled_waiter_leaves_cleanly(store: MemoryStore) -> None:
    """A cancelled duplicate stops waiting; other waiters and the running call go on."""
    gate = anyio.Event()

    @idempotent(key="{name}", namespace="t", store=store)
    async def task(name: str) -> str:
        if name == "k":
            await gate.wait()
        return name

    results: list[str] = []

    async def call() -> None:
        results.append(await task("k"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call)
        await until_async(lambda: len(store) == 1)
        tg.start_soon(call)
        await until_async(lambda: board.waiting(store, "t:k") == 1)
        with anyio.move_on_after(0.01) as scope:
            await task("k")
        assert scope.cancelled_caught
        assert board.waiting(store, "t:k") == 1
        assert await task("other") == "other"  # landing another key wakes nobody here
        assert board.waiting(store, "t:k") == 1
        gate.set()
    assert results == ["k", "k"]
    assert board.waiting(store, "t:k") == 0


@pytest.mark.anyio
async def test_async_waiters_wait_for_a_sync_call_in_a_thread(
    store: MemoryStore,
) -> None:
    """Tasks on the loop wait for a sync call running in a worker thread."""
    gate = threading.Event()
    runs: list[str] = []

    @idempotent(key="k", namespace="shared", store=store)
    def sync_task() -> str:
        gate.wait(5)
        runs.append("thread")
        return "from thread"

    @idempotent(key="k", namespace="shared", store=store)
    async def async_task() -> str:
        runs.append("loop")
        return "from loop"

    results: list[str] = []

    async def in_thread() -> None:
        results.append(await anyio.to_thread.run_sync(sync_task))

    async def on_loop() -> None:
        results.append(await async_task())

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_thread)
        await until_async(lambda: len(store) == 1)
        for _ in range(50):
            tg.start_soon(on_loop)
        await until_async(lambda: board.waiting(store, "shared:k") == 50)
        gate.set()
    assert runs == ["thread"]
    assert results == ["from thread"] * 51


@pytest.mark.anyio
async def test_thread_and_task_waiters_share_a_failed_async_call(
    store: MemoryStore,
) -> None:
    """Threads and tasks both wait on an async call; when it fails, one of them runs."""
    gate = anyio.Event()
    runs: list[str] = []

    @idempotent(key="k", namespace="shared", store=store)
    async def async_task(who: str) -> str:
        runs.append(who)
        if who == "owner":
            await gate.wait()
            raise RuntimeError("boom")
        return who

    @idempotent(key="k", namespace="shared", store=store)
    def sync_task() -> str:
        runs.append("thread")
        return "thread"

    results: list[str] = []

    async def owner() -> None:
        with pytest.raises(RuntimeError):
            await async_task("owner")

    async def in_thread() -> None:
        results.append(await anyio.to_thread.run_sync(sync_task))

    async def on_loop() -> None:
        results.append(await async_task("task"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(owner)
        await until_async(lambda: len(store) == 1)
        for _ in range(3):
            tg.start_soon(in_thread)
            tg.start_soon(on_loop)
        await until_async(lambda: board.waiting(store, "shared:k") == 6)
        gate.set()
    assert len(runs) == 2
    assert [runs[1]] * 6 == results


@pytest.mark.anyio
async def test_recorded_error_reaches_waiters(store: MemoryStore) -> None:
    """Waiters of a call that raised a listed error get that error (a copy each)."""
    gate = anyio.Event()
    error = LookupError("no such user")

    @idempotent(key="k", namespace="t", store=store, record_errors=LookupError)
    async def task() -> None:
        await gate.wait()
        raise error

    caught: list[BaseException] = []

    async def call() -> None:
        try:
            await task()
        except LookupError as exc:
            caught.append(exc)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        await until_async(lambda: board.waiting(store, "t:k") == 2)
        gate.set()
    assert caught[0] is error  # the owner's own exception
    assert all(type(e) is LookupError and e.args == error.args for e in caught)
    assert len({id(e) for e in caught}) == 3  # waiters do not share one instance


# --- stores that are not MemoryStore -----------------------------------------


class NoHitStore(MemoryStore):
    """A store whose get never hits, as if records were only visible to claim."""

    __slots__ = ()

    def get_now(self, key: str) -> IdempotencyRecord | None:
        """Never find anything, to drive the claim path."""
        return None


class BrokenStore(NoHitStore):
    """A buggy store reporting completion without a record."""

    __slots__ = ()

    def claim_now(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Report a completed key with no record."""
        return ClaimResult("completed")


@pytest.mark.anyio
async def test_completed_claims_replay_when_get_misses() -> None:
    """A store that answers only through claim still replays, sync and async."""
    store = NoHitStore()
    runs: list[int] = []

    @idempotent(key="k", namespace="t", store=store)
    def task() -> int:
        runs.append(1)
        return 5

    @idempotent(key="k", namespace="t", store=store)
    async def async_task() -> int:
        runs.append(2)
        return 6

    assert (task(), task(), await async_task()) == (5, 5, 5)
    assert runs == [1]


def test_completed_claim_without_a_record_is_a_store_bug() -> None:
    """A store breaking the protocol gets a TypeError, not a silent None."""

    @idempotent(key="k", store=BrokenStore())
    def task() -> int:
        return 1

    with pytest.raises(TypeError, match=r"ClaimResult.record must be set"):
        task()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_waking_a_finished_loop_is_harmless(backend: str) -> None:
    """Landing a flight whose loop has ended neither raises nor hangs."""
    holder: list[LoopWaiters] = []

    async def register() -> None:
        holder.append(LoopWaiters())

    anyio.run(register, backend=backend)
    thread = start_thread(holder[0].wake)
    thread.join()
    assert not holder[0].event.is_set()


def _bound_fingerprint(
    func: Callable[..., object], *args: object, **kwargs: object
) -> str:
    bound = inspect.signature(func).bind(*args, **kwargs)
    bound.apply_defaults()
    text = repr(tuple(bound.arguments.items()))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def test_fingerprint_fast_path_equals_the_full_binding() -> None:
    """The quick binding of plain signatures gives what Signature.bind gives."""

    def plain(a: int, /, b: int, *, c: str = "x") -> None: ...

    def variadic(a: int, *rest: int, **extra: int) -> None: ...

    fp = make_fingerprint(plain, None, "plain")
    assert fp((1, 2), {}) == _bound_fingerprint(plain, 1, 2)
    assert fp((1,), {"b": 2, "c": "x"}) == _bound_fingerprint(plain, 1, 2)
    assert fp((1,), {"b": 2, "c": "y"}) == _bound_fingerprint(plain, 1, b=2, c="y")
    vfp = make_fingerprint(variadic, None, "variadic")
    assert vfp((1, 2), {"z": 3}) == _bound_fingerprint(variadic, 1, 2, z=3)
    for args, kwargs in [((1, 2, 3), {}), ((), {"a": 1, "b": 2}), ((1, 2), {"b": 2})]:
        with pytest.raises(TypeError, match="cannot fingerprint"):
            fp(args, kwargs)


@contextlib.contextmanager
def _key_held_by_a_thread(store: MemoryStore) -> Iterator[Callable[[], str]]:
    """Run a first call that holds the key in a thread; yield the function."""
    entered, release = threading.Event(), threading.Event()

    @idempotent(key="held", store=store, namespace="held")
    def work() -> str:
        entered.set()
        release.wait(5)
        return "done"

    owner = threading.Thread(target=work)
    owner.start()
    try:
        assert entered.wait(5)
        yield work
    finally:
        release.set()
        owner.join()


@pytest.mark.anyio
async def test_sync_duplicate_stops_waiting_when_its_task_is_cancelled() -> None:
    """A sync duplicate run by a TaskManager ends CANCELLED when cancelled."""
    with _key_held_by_a_thread(MemoryStore()) as work:
        async with TaskManager() as manager:
            handle = manager.spawn(work)  # a duplicate: waits in a worker thread
            await until_async(
                lambda: (
                    (info := handle.info()) is not None
                    and info.state is TaskState.RUNNING
                )
            )
            assert await handle.cancel()
            info = await handle.wait(timeout=2)  # the owner still holds the key
        assert info.state is TaskState.CANCELLED


def test_timeout_outside_bounds_a_sync_duplicates_wait() -> None:
    """With @timeout above @idempotent, a sync duplicate waits no longer than it."""
    store = MemoryStore()
    with _key_held_by_a_thread(store) as work:
        bounded = timeout(0.02)(work)
        with pytest.raises(TimeoutError):
            bounded()


class AsyncOnlyStore:
    """A custom store with only the public async protocol (no sync twins)."""

    def __init__(self) -> None:
        self.inner = MemoryStore()
        self.calls: list[str] = []

    async def claim(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Delegate, counting the call."""
        self.calls.append("claim")
        return await self.inner.claim(
            key, owner=owner, lease=lease, fingerprint=fingerprint
        )

    async def complete(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Delegate, counting the call."""
        self.calls.append("complete")
        return await self.inner.complete(
            key, owner=owner, fence=fence, record=record, ttl=ttl
        )

    async def release(self, key: str, *, owner: str, fence: int) -> bool:
        """Delegate, counting the call."""
        self.calls.append("release")
        return await self.inner.release(key, owner=owner, fence=fence)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Delegate."""
        return await self.inner.get(key)

    async def forget(self, key: str) -> None:
        """Delegate."""
        await self.inner.forget(key)

    async def wait(self, key: str, *, timeout: float) -> None:
        """Delegate, counting the call."""
        self.calls.append("wait")
        await self.inner.wait(key, timeout=timeout)


@pytest.mark.anyio
async def test_a_custom_async_store_runs_once_and_wakes_waiters() -> None:
    """Through the public protocol only: one body, waiters use wait, a thread works."""
    store = AsyncOnlyStore()
    gate = anyio.Event()
    runs: list[int] = []

    @idempotent(key="k", namespace="t", store=store)
    async def task() -> int:
        runs.append(1)
        await gate.wait()
        return 4

    @idempotent(key="k", namespace="t", store=store)
    def sync_task() -> int:
        runs.append(2)
        return 5

    results: list[int] = []

    async def call() -> None:
        results.append(await task())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call)
            tg.start_soon(call)
            while "wait" not in store.calls:
                await anyio.sleep(0)
            gate.set()
        assert await anyio.to_thread.run_sync(sync_task) == 4
    assert (results, runs) == ([4, 4], [1])
    assert store.calls.count("complete") == 1


def test_a_memorystore_subclass_overriding_get_now_is_asked_on_hits() -> None:
    """Hits read a MemoryStore's entries directly, unless get_now is overridden."""
    asked: list[str] = []

    class Counting(MemoryStore):
        __slots__ = ()

        def get_now(self, key: str) -> IdempotencyRecord | None:
            asked.append(key)
            return super().get_now(key)

    @idempotent(key="k:{n}", store=Counting())
    def one(n: int) -> int:
        return n

    assert one(1) == 1
    assert one(1) == 1
    assert asked == [f"{__name__}.{one.__qualname__}:k:1"] * 2


def test_one_field_key_formats_exactly_like_str_format(store: MemoryStore) -> None:
    """The one-field template key equals str.format's, __format__ overrides included."""

    class Odd(int):
        def __format__(self, spec: str) -> str:
            return f"odd<{spec}>"

    @idempotent(key="a{n}b", store=store, namespace="f")
    def plain(n: object) -> object:
        return n

    @idempotent(key="{n:>4}", store=store, namespace="g")
    def spec(n: object) -> object:
        return n

    for value in (Odd(3), 7, "x", True, 1.5):
        plain(value)
        spec(value)
        for namespace, template in (("f", "a{n}b"), ("g", "{n:>4}")):
            key = f"{namespace}:" + template.format(n=value)
            assert store.get_now(key) is not None
