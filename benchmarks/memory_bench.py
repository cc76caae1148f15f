"""Section 5: memory kept per finished record, and ``get()`` latency as records grow.

Records are made the honest way, through ``TaskManager.spawn`` of real tasks that
run and finish, with retention set high enough to keep all of them.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import anyio
from _harness import Build, Config, Report, Row, attempt, compare_sync, judge, ratio

DRAIN = 600.0
KEEP_FOREVER = 10 * 365 * 24 * 3600.0  # finished_ttl: nothing expires during a run
BATCH = 5_000  # tasks in flight at once while building records
SAMPLE = 1_000  # ids looked up per get() measurement


async def _noop() -> None:
    return None


async def _spawn_finished(manager: Any, count: int, ids: list[str] | None) -> None:
    """Spawn ``count`` trivial tasks in batches and wait until all have finished.

    The collector stays on and nothing is frozen: finished records are tuples
    it does not track, so a million of them cost it nothing.
    """
    left = count
    while left:
        handles = [manager.spawn(_noop) for _ in range(min(BATCH, left))]
        for handle in handles:
            await handle.wait()
        if ids is not None:
            ids.extend(h.id for h in handles)
        left -= len(handles)


async def _settle() -> None:
    """Let the tasks that just finished be torn down, then collect garbage.

    A waiter wakes as soon as the task records its end, a moment before the
    event loop drops the task object itself; without this, the last batch's
    task objects would be counted as memory kept per record.
    """
    for _ in range(5):
        await anyio.sleep(0)
    await anyio.sleep(0.05)
    gc.collect()


def _lookups(manager: Any, sample: list[str]) -> Build:
    """A case for compare_sync: each call looks up the next id of ``sample``."""

    def build() -> Callable[[], object]:
        ids = itertools.cycle(sample)
        get = manager.get
        return lambda: get(next(ids))

    return build


def _bytes_per_record(cfg: Config) -> float:
    n = cfg.memory_records

    async def main() -> float:
        from bgtasks import TaskManager

        manager = TaskManager(
            max_finished=n + BATCH + 1_000,
            finished_ttl=KEEP_FOREVER,
            drain_timeout=DRAIN,
        )
        async with manager:
            # Warm-up with one full batch: the hash tables that anyio and asyncio
            # grow for BATCH tasks in flight (and never shrink) exist already, so
            # they are not counted as memory per finished record.
            await _spawn_finished(manager, BATCH, None)
            await _settle()
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                await _spawn_finished(manager, n, None)
                await _settle()
                after = tracemalloc.get_traced_memory()[0]
            finally:
                tracemalloc.stop()
            kept = len(manager.list())
            if kept < n:
                raise RuntimeError(f"only {kept} of {n} records kept")
        return (after - before) / n

    return anyio.run(main)


def _get_latencies(report: Report, cfg: Config, section: str) -> None:
    """Build one manager per size, then time ``get()`` on all of them interleaved."""
    sizes = cfg.get_sizes
    rows: list[Row] = []

    async def main() -> None:
        from bgtasks import TaskManager

        async with contextlib.AsyncExitStack() as stack:
            cases: list[tuple[str, Build]] = []
            for size in sizes:
                manager = await stack.enter_async_context(
                    TaskManager(
                        max_finished=size + 1_000,
                        finished_ttl=KEEP_FOREVER,
                        drain_timeout=DRAIN,
                    )
                )
                ids: list[str] = []
                t0 = time.perf_counter()
                await _spawn_finished(manager, size, ids)
                built = time.perf_counter() - t0
                build = report.add(
                    Row(
                        section,
                        f"build {size:,} records via spawn (GC on, no freeze)",
                        unit="s",
                    )
                )
                build.value = built
                build.note = f"{size / built:,.0f} tasks/s"
                sample = random.sample(ids, min(SAMPLE, len(ids)))
                del ids
                if any(manager.get(i) is None for i in sample):
                    raise RuntimeError("a record was dropped: retention too small")
                cases.append(
                    (f"get() with {size:,} records", _lookups(manager, sample))
                )
            rows.extend(compare_sync(report, cfg, section, cases))

    try:
        anyio.run(main)
    except Exception as exc:
        report.add(Row(section, "get() latency", error=f"{type(exc).__name__}: {exc}"))
        return
    first = rows[0]
    for row in rows[1:]:
        r = ratio(row.value, first.value)
        judge(
            row,
            f"flat: <= 2x get() at {sizes[0]:,}",
            None if r is None else r <= 2.0,
            r,
            f"{sizes[0]:,}",
        )


def run(report: Report, cfg: Config) -> None:
    section = "5. memory and lookup"
    per = attempt(
        report,
        Row(
            section,
            f"kept per finished record ({cfg.memory_records:,} tasks, result None)",
            unit="B/record",
        ),
        lambda: _bytes_per_record(cfg),
    )
    if per.ok:
        assert per.value is not None
        judge(per, "< 400 B per record", per.value < 400)
    _get_latencies(report, cfg, section)
