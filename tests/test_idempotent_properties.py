"""Random calls, failures, expiries and key templates agree with a simple model."""

from __future__ import annotations

import threading
from collections import OrderedDict

import anyio
import anyio.to_thread
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from bgtasks import MemoryStore, idempotent
from bgtasks._clock import ManualClock
from bgtasks._idempotency.stores import IdempotencyRecord
from bgtasks._idempotency.waiting import board

TTL = 100.0


class Boom(Exception):
    """A run that failed; carries the run number."""


# One batch: callers (start delay, in a thread?), failure script, expire afterwards?
batch = st.tuples(
    st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=6),
    st.lists(st.booleans(), max_size=6),
    st.booleans(),
)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@settings(max_examples=25, deadline=None)
@given(batches=st.lists(batch, min_size=1, max_size=4))
def test_concurrent_calls_match_the_model(
    backend: str, batches: list[tuple[list[tuple[int, bool]], list[bool], bool]]
) -> None:
    """Runs are serial; each caller gets its own failure or the one recorded success."""
    clock = ManualClock()
    store = MemoryStore(clock=clock)
    lock = threading.Lock()
    state = {"running": 0, "runs": 0}
    script: list[bool] = []

    def run_body() -> int:
        with lock:
            state["running"] += 1
            assert state["running"] == 1, "two bodies ran at once"
            state["runs"] += 1
            run = state["runs"]
            fail = script.pop(0) if script else False
            state["running"] -= 1
        if fail:
            raise Boom(run)
        return run

    @idempotent(key="k", namespace="p", store=store, ttl=TTL)
    async def on_loop() -> int:
        await anyio.sleep(0)
        return run_body()

    @idempotent(key="k", namespace="p", store=store, ttl=TTL)
    def in_thread() -> int:
        return run_body()

    async def call(delay: int, threaded: bool, out: list[object]) -> None:
        for _ in range(delay):
            await anyio.sleep(0)
        try:
            out.append(
                await anyio.to_thread.run_sync(in_thread)
                if threaded
                else await on_loop()
            )
        except Boom as exc:
            out.append(exc)

    async def scenario() -> None:
        recorded: int | None = None
        for callers, failures, expire in batches:
            script[:] = failures
            runs_before = state["runs"]
            out: list[object] = []
            async with anyio.create_task_group() as tg:
                for delay, threaded in callers:
                    tg.start_soon(call, delay, threaded, out)
            runs = state["runs"] - runs_before
            errors = [r for r in out if isinstance(r, Boom)]
            values = {r for r in out if not isinstance(r, Boom)}
            if recorded is not None:
                assert (0, {recorded}) == (runs, values)
            else:
                # Runs are serial and stop at the first success or when all ran.
                expected_runs = 0
                for n in range(len(callers)):
                    expected_runs += 1
                    if not (n < len(failures) and failures[n]):
                        break
                expected_errors = sum(failures[:expected_runs])
                assert (expected_runs, expected_errors) == (runs, len(errors))
                if runs > expected_errors:
                    recorded = runs_before + runs
                    assert {recorded} == values
                else:
                    assert not values
            assert len(callers) == len(out)
            assert board.waiting(store, "p:k") == 0
            if expire:
                clock.advance(TTL)
                recorded = None

    anyio.run(scenario, backend=backend)


class StoreMachine(RuleBasedStateMachine):
    """MemoryStore against a dict-and-list model, under random operations."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock()
        self.store = MemoryStore(max_entries=3, clock=self.clock)
        self.claims: dict[str, tuple[str, float]] = {}
        # The fence each owner last got for each key (0 before any claim).
        self.fences: dict[tuple[str, str], int] = {}
        self.done: OrderedDict[str, tuple[IdempotencyRecord, float]] = OrderedDict()

    def _record(self, key: str) -> IdempotencyRecord | None:
        # The model's view: an unexpired record counts as used.
        entry = self.done.get(key)
        if entry is None:
            return None
        if entry[1] <= self.clock():
            del self.done[key]
            return None
        self.done.move_to_end(key)
        return entry[0]

    def _evict(self) -> None:
        while len(self.done) + len(self.claims) > 3 and self.done:
            self.done.popitem(last=False)

    keys = st.sampled_from("abcde")
    owners = st.sampled_from(["o1", "o2", "o3"])

    @rule(key=keys, owner=owners, lease=st.sampled_from([1.0, 5.0]))
    def claim(self, key: str, owner: str, lease: float) -> None:
        """Claiming agrees with the model: record, running claim, or a new claim."""
        found = self.store.claim_now(key, owner=owner, lease=lease, fingerprint=None)
        record = self._record(key)
        held = self.claims.get(key)
        if record is not None:
            assert ("completed", record) == (found.status, found.record)
        elif held is not None and held[1] > self.clock():
            assert ("in_progress", held[1] - self.clock()) == (
                found.status,
                found.retry_after,
            )
        else:
            assert found.status == "claimed"
            assert found.fence > max(self.fences.values(), default=0)
            self.fences[key, owner] = found.fence
            self.claims[key] = (owner, self.clock() + lease)
            self._evict()

    @rule(
        key=keys, owner=owners, value=st.integers(0, 3), ttl=st.sampled_from([2.0, 8.0])
    )
    def complete(self, key: str, owner: str, value: int, ttl: float) -> None:
        """Only the holder of a claim may record it."""
        record = IdempotencyRecord(value)
        fence = self.fences.get((key, owner), 0)
        ok = self.store.complete_now(
            key, owner=owner, fence=fence, record=record, ttl=ttl
        )
        held = self.claims.get(key)
        assert (held is not None and held[0] == owner) == ok
        if ok:
            del self.claims[key]
            self.done[key] = (record, self.clock() + ttl)
            self.done.move_to_end(key)
            self._evict()

    @rule(key=keys, owner=owners)
    def release(self, key: str, owner: str) -> None:
        """Only the holder of a claim may release it."""
        held = self.claims.get(key)
        expected = held is not None and held[0] == owner
        fence = self.fences.get((key, owner), 0)
        assert expected == self.store.release_now(key, owner=owner, fence=fence)
        if expected:
            del self.claims[key]

    @rule(key=keys)
    def get(self, key: str) -> None:
        """get returns exactly the unexpired record."""
        assert self._record(key) == self.store.get_now(key)

    @rule(key=keys)
    def forget(self, key: str) -> None:
        """forget drops the key whatever it held."""
        self.store.forget_now(key)
        self.claims.pop(key, None)
        self.done.pop(key, None)

    @rule(seconds=st.sampled_from([0.5, 1.0, 3.0]))
    def advance(self, seconds: float) -> None:
        """Time passes."""
        self.clock.advance(seconds)

    @invariant()
    def sizes_agree(self) -> None:
        """The store holds what the model holds, in bounds unless claims overflow."""
        assert len(self.claims) + len(self.done) == len(self.store)
        assert len(self.store) <= max(3, len(self.claims))


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None
)


# Key templates: literal text (with escaped braces) and plain or formatted fields.
_literal = st.text(alphabet="x:{}", max_size=4).map(
    lambda text: text.replace("{", "{{").replace("}", "}}")
)
_field = st.sampled_from(["{a}", "{b}", "{a!r}", "{b!s}", "{a:>3}", "{b:_<2}"])
_template = st.lists(st.one_of(_literal, _field), min_size=1, max_size=6).map("".join)


@settings(max_examples=300, deadline=None)
@given(
    template=_template, a=st.text(alphabet="x{}<3", max_size=3), b=st.text(max_size=3)
)
def test_a_template_key_is_what_str_format_gives(template: str, a: str, b: str) -> None:
    """Every key equals namespace + ":" + template.format(**arguments), by any call."""
    if not template:
        return
    store = MemoryStore()

    @idempotent(key=template, namespace="ns", store=store)
    def task(a: str, b: str = "") -> int:
        return 1

    @idempotent(key=template + "{b:{a}}", namespace="slow", store=store)
    def spec_task(a: str, b: str = "") -> int:
        return 2

    expected = template.format(a=a, b=b)
    task(a, b)
    task(b=b, a=a + "-")
    assert store.get_now(f"ns:{expected}") is not None
    assert store.get_now("ns:" + template.format(a=a + "-", b=b)) is not None
    try:
        formatted = format(b, a)
    except ValueError:  # "{b:{a}}" needs ``a`` to be a valid format spec
        return
    spec_task(a, b=b)
    assert store.get_now("slow:" + template.format(a=a, b=b) + formatted) is not None


def test_escaped_braces_are_kept_in_the_key() -> None:
    """Literal braces around fields stay in the key, so different calls differ."""
    store = MemoryStore()

    @idempotent(key="v{{1}}:{a}", namespace="f", store=store)
    def f(a: str) -> str:
        return a

    @idempotent(key="{a}}}{{{b}", namespace="g", store=store)
    def g(a: str, b: str) -> tuple[str, str]:
        return a, b

    f("x")
    assert store.get_now("f:v{1}:x") is not None
    assert g("x", "}y") == ("x", "}y")
    assert g("x}", "y") == ("x}", "y")


def test_an_empty_key_is_refused_at_decoration() -> None:
    """key="" is a ValueError naming key and the fix, not a bare IndexError later."""
    with pytest.raises(ValueError, match=r'key=""\) is empty.*key="welcome:\{email\}"'):
        idempotent(key="")
