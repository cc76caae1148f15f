"""Sections 1 and 2: ``retry`` against a hand-written loop, tenacity, stamina, backoff.

Every decorator is configured for 3 attempts. Section 1 calls a function that
succeeds at once (the success path every task pays); section 2 a function that
fails twice with ``ConnectionError`` and then succeeds, with every wait set to
zero, so what is measured is the retry machinery, not sleeping.

Section 2 also has opnieuw, with its own test helper ``retry_immediately()``
and, in sync code, its ``time.sleep(0)`` made a no-op (bgtasks calls no sleep
for a zero wait), and bgtasks with its retry logging silenced: ``retry(logger=)``
given a logger whose level is above WARNING, the same as raising the level of
the ``bgtasks`` logger. Then no log record, message or event is made at all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any

import anyio
import backoff as backoff_lib
import opnieuw
import opnieuw.retries
import stamina
import tenacity
from _harness import (
    Build,
    Config,
    Report,
    Row,
    compare_async,
    compare_sync,
    judge,
    ratio,
)
from _harness import with_overheads as set_overheads

ATTEMPTS = 3

# --- the functions under test -------------------------------------------------


def _ok() -> int:
    return 1


async def _aok() -> int:
    return 1


def _flaky() -> Callable[[], int]:
    """A function whose calls fail, fail, succeed, fail, fail, succeed, ..."""
    calls = 0

    def flaky() -> int:
        nonlocal calls
        calls += 1
        if calls % ATTEMPTS:
            raise ConnectionError("flaky")
        return 1

    return flaky


def _aflaky() -> Callable[[], Awaitable[int]]:
    calls = 0

    async def aflaky() -> int:
        nonlocal calls
        calls += 1
        if calls % ATTEMPTS:
            raise ConnectionError("flaky")
        return 1

    return aflaky


# --- the hand-written reference: what a careful user writes without a library --


def _hand_loop(func: Callable[..., int], *, sleep: bool = False) -> Callable[..., int]:
    # Decorator-shaped, like every library row: it forwards *args and **kwargs.
    def wrapper(*args: Any, **kwargs: Any) -> int:
        for n in range(1, ATTEMPTS + 1):
            try:
                return func(*args, **kwargs)
            except Exception:
                if n == ATTEMPTS:
                    raise
            if sleep:
                time.sleep(0)
        raise AssertionError("unreachable")

    return wrapper


def _ahand_loop(
    func: Callable[..., Awaitable[int]], *, sleep: bool = False
) -> Callable[..., Awaitable[int]]:
    async def wrapper(*args: Any, **kwargs: Any) -> int:
        for n in range(1, ATTEMPTS + 1):
            try:
                return await func(*args, **kwargs)
            except Exception:
                if n == ATTEMPTS:
                    raise
            if sleep:
                await anyio.sleep(0)
        raise AssertionError("unreachable")

    return wrapper


# --- the decorators, configured alike -----------------------------------------


def _bgtasks(*, zero_wait: bool) -> Callable[[Any], Any]:
    import bgtasks

    if not zero_wait:
        return bgtasks.retry(on=Exception, attempts=ATTEMPTS)
    try:
        wait: Any = bgtasks.backoff.fixed(0)
    except (AttributeError, TypeError, ValueError):
        # bgtasks.backoff accepts any (attempt) -> seconds callable as well.
        def wait(attempt: int) -> float:
            return 0.0

    return bgtasks.retry(on=Exception, attempts=ATTEMPTS, backoff=wait)


def _tenacity(*, zero_wait: bool) -> Callable[[Any], Any]:
    # wait_none() is tenacity's default too: both configurations wait zero.
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_none(),
        reraise=True,
    )


def _stamina(*, zero_wait: bool) -> Callable[[Any], Any]:
    if not zero_wait:
        return stamina.retry(on=Exception, attempts=ATTEMPTS)
    return stamina.retry(
        on=Exception, attempts=ATTEMPTS, wait_initial=0, wait_max=0, wait_jitter=0
    )


def _backoff(*, zero_wait: bool) -> Callable[[Any], Any]:
    if not zero_wait:
        return backoff_lib.on_exception(backoff_lib.expo, Exception, max_tries=ATTEMPTS)
    return backoff_lib.on_exception(
        backoff_lib.constant, Exception, max_tries=ATTEMPTS, interval=0, jitter=None
    )


# Above WARNING: retry asks the logger once per call and formats nothing.
_SILENCED = logging.getLogger("bgtasks.bench.silenced")
_SILENCED.setLevel(logging.CRITICAL + 1)


def _bgtasks_silenced(*, zero_wait: bool) -> Callable[[Any], Any]:
    import bgtasks

    return bgtasks.retry(
        on=Exception,
        attempts=ATTEMPTS,
        backoff=bgtasks.backoff.fixed(0),
        logger=_SILENCED,
    )


def _opnieuw(*, zero_wait: bool) -> Callable[[Any], Any]:
    # Waits are skipped by retry_immediately(), entered around the section.
    return opnieuw.retry(retry_on_exceptions=Exception, max_calls_total=ATTEMPTS)


@contextmanager
def _opnieuw_no_waits() -> Iterator[None]:
    """opnieuw's retry_immediately(), and its sync time.sleep(0) as a no-op."""
    from opnieuw.test_util import retry_immediately

    module: Any = opnieuw.retries
    saved = module.time
    module.time = SimpleNamespace(sleep=lambda seconds: None)
    try:
        with retry_immediately():
            yield
    finally:
        module.time = saved


LIBRARIES: dict[str, Callable[..., Callable[[Any], Any]]] = {
    "bgtasks retry": _bgtasks,
    "tenacity": _tenacity,
    "stamina": _stamina,
    "backoff": _backoff,
}


def _checked(call: Callable[[], Any], *, is_async: bool) -> Callable[[], Any]:
    """Make sure one call returns 1 before timing it (catches misconfiguration)."""
    if is_async:

        async def once() -> Any:
            return await call()

        result = anyio.run(once)
    else:
        result = call()
    if result != 1:
        raise RuntimeError(f"expected 1, got {result!r}")
    return call


def _section(report: Report, cfg: Config, *, is_async: bool, failing: bool) -> None:
    kind = "async, asyncio" if is_async else "sync"
    if failing:
        section = f"2. retry, fails twice then succeeds, zero waits ({kind})"
    else:
        section = f"1. retry, success on first call ({kind})"

    def target() -> Callable[[], Any]:
        if failing:
            return _aflaky() if is_async else _flaky()
        return _aok if is_async else _ok

    hand = _ahand_loop if is_async else _hand_loop
    cases: list[tuple[str, Build]] = []
    if not failing:
        cases.append(("bare call", target))
    cases.append(
        (
            "hand-written try/except loop",
            lambda: _checked(hand(target()), is_async=is_async),
        )
    )
    if failing:
        # time.sleep(0) is a real syscall (~50 µs of timer slack on Linux); the
        # peers call it even for a zero wait, so show what it costs alone.
        cases.append(
            (
                "hand-written loop + sleep(0) between attempts",
                lambda: _checked(hand(target(), sleep=True), is_async=is_async),
            )
        )
    libraries = dict(LIBRARIES)
    if failing:
        libraries["bgtasks retry, logging silenced"] = _bgtasks_silenced
        libraries["opnieuw (retry_immediately, no-op sleep)"] = _opnieuw
    for name, make in libraries.items():

        def build(
            make: Callable[..., Callable[[Any], Any]] = make,
        ) -> Callable[[], Any]:
            return _checked(make(zero_wait=failing)(target()), is_async=is_async)

        cases.append((name, build))
    compare = compare_async if is_async else compare_sync
    with _opnieuw_no_waits():
        rows = compare(report, cfg, section, cases)
    bare = None if failing else rows[0]
    set_overheads(rows[1:] if bare else rows, bare)
    _judge(section, report, failing=failing, bare=bare)


def _judge(section: str, report: Report, *, failing: bool, bare: Row | None) -> None:
    loop = report.find(section, "hand-written try/except loop")
    ours = report.find(section, "bgtasks retry")
    if loop is None or ours is None:
        return

    def cost(row: Row | None) -> float | None:
        # Success path: compare overheads over the bare call, as the goal says;
        # failing path: there is no bare call, compare whole calls.
        if row is None or not row.ok:
            return None
        return row.overhead if bare is not None else row.value

    if failing:
        for row in report.rows:
            if row.section == section and row is not loop and row.ok:
                row.ratio, row.ratio_of = ratio(cost(row), cost(loop)), "loop"
        silenced = report.find(section, "bgtasks retry, logging silenced")
        peer = report.find(section, "opnieuw (retry_immediately, no-op sleep)")
        if silenced is not None and peer is not None:
            r = ratio(cost(silenced), cost(peer))
            judge(silenced, "<= opnieuw", None if r is None else r <= 1.0, r, "opnieuw")
        return
    r = ratio(cost(ours), cost(loop))
    judge(ours, "overhead <= 2x loop", None if r is None else r <= 2.0, r, "loop")
    for name in ("tenacity", "stamina"):
        peer = report.find(section, name)
        r = ratio(cost(peer), cost(ours))
        judge(
            peer,
            ">= 20x bgtasks overhead",
            None if r is None else r >= 20.0,
            r,
            "bgtasks",
        )
    peer = report.find(section, "backoff")
    if peer is not None and peer.ok:
        peer.ratio, peer.ratio_of = ratio(cost(peer), cost(ours)), "bgtasks"


def run(report: Report, cfg: Config) -> None:
    for failing in (False, True):
        for is_async in (False, True):
            _section(report, cfg, is_async=is_async, failing=failing)
