"""Section 3: ``timeout``, ``logged`` and ``idempotent`` per-call overhead."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
from _harness import Build, Config, Report, compare_async, compare_sync, judge, ratio
from _harness import with_overheads as set_overheads

TIMEOUT = 60.0  # never reached: the deadline machinery is what is measured


def _ok() -> int:
    return 1


async def _aok() -> int:
    return 1


def _one(n: int) -> int:
    return n


async def _aone(n: int) -> int:
    return n


# --- timeout ------------------------------------------------------------------


def _timeout_async(report: Report, cfg: Config, backend: str) -> None:
    section = f"3. timeout, async ({backend})"

    async def raw() -> int:
        with anyio.fail_after(TIMEOUT):
            return await _aok()

    def ours() -> Callable[[], Any]:
        import bgtasks

        return bgtasks.timeout(TIMEOUT)(_aok)

    bare, block, mine = compare_async(
        report,
        cfg,
        section,
        [
            ("bare call", lambda: _aok),
            ("raw anyio.fail_after block", lambda: raw),
            ("bgtasks timeout", ours),
        ],
        backend,
    )
    set_overheads([block, mine], bare)
    r = ratio(mine.overhead, block.overhead) if mine.ok else None
    judge(
        mine,
        "overhead <= 1.5x fail_after",
        None if r is None else r <= 1.5,
        r,
        "fail_after",
    )


def _timeout_sync(report: Report, cfg: Config) -> None:
    section = "3. timeout, sync (cooperative: deadline published, no thread killed)"

    def ours() -> Callable[[], Any]:
        import bgtasks

        return bgtasks.timeout(TIMEOUT)(_ok)

    bare, mine = compare_sync(
        report, cfg, section, [("bare call", lambda: _ok), ("bgtasks timeout", ours)]
    )
    set_overheads([mine], bare)


# --- logged -------------------------------------------------------------------


@contextmanager
def _bgtasks_logger(*, enabled: bool) -> Iterator[logging.Logger]:
    """Route the ``bgtasks`` logger to a NullHandler, with records made or not."""
    log = logging.getLogger("bgtasks")
    saved = (log.level, log.propagate, log.handlers[:])
    handler = logging.NullHandler()
    log.handlers = [handler]
    log.propagate = False
    # Disabled: above CRITICAL, so no LogRecord is even created.
    log.setLevel(logging.DEBUG if enabled else logging.CRITICAL + 1)
    try:
        yield log
    finally:
        log.setLevel(saved[0])
        log.propagate = saved[1]
        log.handlers = saved[2]


def _hand_logged(log: logging.Logger) -> Callable[[], int]:
    """What a user writes by hand: start and finish lines with a duration."""

    def wrapper() -> int:
        log.info("task started", extra={"task_name": "_ok"})
        t0 = time.perf_counter()
        try:
            result = _ok()
        except Exception:
            log.exception("task failed", extra={"task_name": "_ok"})
            raise
        duration = time.perf_counter() - t0
        log.info("task succeeded", extra={"task_name": "_ok", "duration": duration})
        return result

    return wrapper


def _logged(report: Report, cfg: Config, *, is_async: bool) -> None:
    kind = "async, asyncio" if is_async else "sync"
    section = f"3. logged, NullHandler ({kind})"
    target: Callable[[], Any] = _aok if is_async else _ok
    compare = compare_async if is_async else compare_sync

    def ours() -> Callable[[], Any]:
        import bgtasks

        return bgtasks.logged(target)

    # The logger's level decides whether records are made, so the two ways of
    # running bgtasks' logged are two comparisons.
    with _bgtasks_logger(enabled=True) as log:
        cases: list[tuple[str, Build]] = [("bare call", lambda: target)]
        if not is_async:
            cases.append(
                (
                    "hand-written start/finish logging, records made",
                    lambda: _hand_logged(log),
                )
            )
        cases.append(("bgtasks logged, enabled, records to NullHandler", ours))
        rows = compare(report, cfg, section, cases)
    with _bgtasks_logger(enabled=False):
        rows += compare(
            report,
            cfg,
            section,
            [("bgtasks logged, logger disabled (no records)", ours)],
        )
    set_overheads(rows[1:], rows[0])
    hand = rows[1] if not is_async else None
    if hand is not None and hand.ok:
        for row in rows[2:]:
            if row.ok:
                row.ratio, row.ratio_of = ratio(row.overhead, hand.overhead), "hand"


# --- idempotent ---------------------------------------------------------------


def _idempotent(report: Report, cfg: Config, *, is_async: bool) -> None:
    kind = "async, asyncio" if is_async else "sync"
    section = f"3. idempotent, MemoryStore ({kind})"
    target: Callable[[int], Any] = _aone if is_async else _one

    def prime(f: Callable[[int], Any]) -> None:
        if is_async:

            async def once() -> None:
                await f(1)

            anyio.run(once)
        else:
            f(1)

    def hit(key: Any, *, fingerprint: bool = False) -> Callable[[], Any]:
        from bgtasks import MemoryStore, idempotent

        f = idempotent(key=key, store=MemoryStore(), fingerprint=fingerprint)(target)
        prime(f)  # completed once: every timed call is a hit
        return lambda: f(1)

    def miss() -> Callable[[], Any]:
        from bgtasks import MemoryStore, idempotent

        f = idempotent(key=lambda n: f"miss:{n}", store=MemoryStore())(target)
        fresh = itertools.count(2)
        return lambda: f(next(fresh))

    def hand() -> Callable[[], Any]:
        done: dict[str, int] = {}

        def f(n: int) -> int:
            key = f"hand:{n}"
            if key in done:
                return done[key]
            result = done[key] = _one(n)
            return result

        return lambda: f(1)

    cases: list[tuple[str, Build]] = [("bare call", lambda: lambda: target(1))]
    if not is_async:
        cases.append(("hand-written dict check (racy)", hand))
    cases += [
        ("bgtasks idempotent hit, callable key", lambda: hit(lambda n: f"hit:{n}")),
        ("bgtasks idempotent hit, template key", lambda: hit("hit:{n}")),
        (
            "bgtasks idempotent hit, template key, fingerprint=True",
            lambda: hit("hit:{n}", fingerprint=True),
        ),
        ("bgtasks idempotent miss, callable key", miss),
    ]
    compare = compare_async if is_async else compare_sync
    rows = compare(report, cfg, section, cases)
    set_overheads(rows[1:], rows[0])
    for row in rows:
        if row.ok and "hit" in row.name:
            assert row.value is not None
            if "fingerprint" in row.name:
                judge(row, "hit <= 1.5 µs per call", row.value <= 1.5)
            else:
                judge(row, "hit <= 0.5 µs per call", row.value <= 0.5)


def run(report: Report, cfg: Config) -> None:
    for backend in ("asyncio", "trio"):
        _timeout_async(report, cfg, backend)
    _timeout_sync(report, cfg)
    for is_async in (False, True):
        _logged(report, cfg, is_async=is_async)
    for is_async in (False, True):
        _idempotent(report, cfg, is_async=is_async)
