"""Timing, rows, goals and the table shared by every benchmark module.

Each figure is the median of several timed repeats after a warm-up that also
calibrates the loop count (timeit's autorange idea, with a shorter target so the
whole run stays within minutes), shown with its spread over the repeats
(min..max). Micro-benchmarks run with the garbage collector
off during the timed loop, as ``timeit`` does; throughput and memory
benchmarks keep it on, as an application would.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio


@dataclass(frozen=True)
class Config:
    """How long and how often to measure; ``--quick`` shrinks every size."""

    quick: bool
    repeats: int
    target_seconds: float  # one timed repeat of a micro-benchmark lasts at least this
    throughput_tasks: int
    throughput_repeats: int
    memory_records: int
    get_sizes: tuple[int, ...]

    @classmethod
    def make(cls, *, quick: bool) -> Config:
        if quick:
            return cls(
                quick=True,
                repeats=3,
                target_seconds=0.01,
                throughput_tasks=5_000,
                throughput_repeats=2,
                memory_records=20_000,
                get_sizes=(1_000, 10_000, 100_000),
            )
        return cls(
            quick=False,
            repeats=7,
            target_seconds=0.05,
            throughput_tasks=20_000,
            throughput_repeats=4,
            memory_records=100_000,
            get_sizes=(1_000, 100_000, 1_000_000),
        )


@dataclass
class Row:
    """One line of the table: a measured figure, its comparison and its goal."""

    section: str
    name: str
    value: float | None = None  # in ``unit``: the median of the repeats
    low: float | None = None  # the fastest and slowest repeat, in ``unit``
    high: float | None = None
    unit: str = "µs/call"
    overhead: float | None = None  # µs over the section's bare call, if relevant
    ratio: float | None = None
    ratio_of: str = ""  # what ``ratio`` compares with, e.g. "loop"
    goal: str = ""
    status: str = ""  # "met", "MISSED", or "" when no goal applies
    note: str = ""
    error: str = ""  # set when the row could not run (e.g. code not written yet)
    low: float | None = None  # the spread of ``value`` over the repeats, in ``unit``
    high: float | None = None

    @property
    def ok(self) -> bool:
        return not self.error and self.value is not None


@dataclass
class Report:
    """Every row of one run, in order, plus what the machine was."""

    config: Config
    rows: list[Row] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def find(self, section: str, name: str) -> Row | None:
        for row in self.rows:
            if row.section == section and row.name == name:
                return row
        return None


# --- measuring --------------------------------------------------------------


@contextmanager
def _gc_off() -> Iterator[None]:
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _loops(timed: Callable[[int], float], target: float) -> int:
    """Grow the loop count 1, 2, 5, 10, 20, ... until one run lasts ``target``."""
    number = 1
    while True:
        for step in (1, 2, 5):
            n = number * step
            if timed(n) >= target:
                return n
        number *= 10


Build = Callable[[], Callable[[], Any]]  # makes the callable to time; may raise


# The clock of the micro-benchmarks: wall time unless use_cpu_time() was called.
_clock_ns: Callable[[], int] = time.perf_counter_ns


def use_cpu_time() -> None:
    """Time micro-benchmarks in this process's CPU time (``--cpu-time``).

    On a shared machine, the time other processes hold the CPU then does not
    count; the throughput runs (``compare_runs``) keep the wall clock: they wait.
    """
    global _clock_ns  # noqa: PLW0603 - one switch for the whole run
    _clock_ns = time.process_time_ns


def _timed_sync(func: Callable[[], object], n: int) -> float:
    rng = range(n)
    clock = _clock_ns
    with _gc_off():
        t0 = clock()
        for _ in rng:
            func()
        return (clock() - t0) / 1e9


async def _timed_async(func: Callable[[], Awaitable[object]], n: int) -> float:
    rng = range(n)
    clock = _clock_ns
    with _gc_off():
        t0 = clock()
        for _ in rng:
            await func()
        return (clock() - t0) / 1e9


def _summarize(row: Row, values: list[float], scale: float) -> None:
    """Set the row's median and its spread (fastest..slowest repeat)."""
    row.value = statistics.median(values) * scale
    row.low, row.high = min(values) * scale, max(values) * scale


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:80]


def _build(
    report: Report, section: str, cases: list[tuple[str, Build]], unit: str
) -> list[tuple[Row, Callable[[], Any] | None]]:
    built: list[tuple[Row, Callable[[], Any] | None]] = []
    for name, build in cases:
        row = report.add(Row(section, name, unit=unit))
        try:
            built.append((row, build()))
        except Exception as exc:  # a part not written yet, or broken: a table entry
            row.error = _error(exc)
            built.append((row, None))
    return built


def compare_sync(
    report: Report, cfg: Config, section: str, cases: list[tuple[str, Build]]
) -> list[Row]:
    """Time each case's callable in µs per call; repeats are interleaved.

    Each callable gets its own loop count (the calibration is its warm-up);
    then the repeats go round-robin over the cases, so a slow phase of a noisy
    machine hits every row alike instead of one.
    """
    built = _build(report, section, cases, "µs/call")
    loops: dict[int, int] = {}
    for i, (row, func) in enumerate(built):
        if func is not None:
            try:
                loops[i] = _loops(
                    functools.partial(_timed_sync, func), cfg.target_seconds
                )
            except Exception as exc:
                row.error = _error(exc)
    samples: dict[int, list[float]] = {i: [] for i in loops}
    for _ in range(cfg.repeats):
        for i, n in loops.items():
            func = built[i][1]
            assert func is not None
            samples[i].append(_timed_sync(func, n) / n)
    for i, values in samples.items():
        _summarize(built[i][0], values, 1e6)
    return [row for row, _ in built]


def set_spread(row: Row, values: list[float]) -> None:
    """Set ``row``'s value to the median of ``values``, and its spread (min..max)."""
    row.value = statistics.median(values)
    row.low, row.high = min(values), max(values)


def compare_async(
    report: Report,
    cfg: Config,
    section: str,
    cases: list[tuple[str, Build]],
    backend: str = "asyncio",
) -> list[Row]:
    """Like :func:`compare_sync`, for ``await func()`` in one ``backend`` loop."""
    built = _build(report, section, cases, "µs/call")

    async def calibrate(func: Callable[[], Awaitable[object]]) -> int:
        number = 1
        while True:
            for step in (1, 2, 5):
                if await _timed_async(func, number * step) >= cfg.target_seconds:
                    return number * step
            number *= 10

    async def main() -> None:
        loops: dict[int, int] = {}
        for i, (row, func) in enumerate(built):
            if func is not None:
                try:
                    loops[i] = await calibrate(func)
                except Exception as exc:
                    row.error = _error(exc)
        samples: dict[int, list[float]] = {i: [] for i in loops}
        for _ in range(cfg.repeats):
            for i, n in loops.items():
                func = built[i][1]
                assert func is not None
                samples[i].append(await _timed_async(func, n) / n)
        for i, values in samples.items():
            _summarize(built[i][0], values, 1e6)

    anyio.run(main, backend=backend)
    return [row for row, _ in built]


def compare_runs(
    report: Report,
    section: str,
    cases: list[tuple[str, Callable[[], float]]],
    *,
    repeats: int,
    unit: str,
    convert: Callable[[float], float],
) -> list[Row]:
    """Median of ``repeats`` interleaved runs of each case, after one warm-up run.

    Each run returns seconds; ``convert`` turns the median into the row's unit.
    The garbage collector stays on: these are application-shaped workloads.
    """
    rows = [report.add(Row(section, name, unit=unit)) for name, _ in cases]
    live: dict[int, list[float]] = {}
    for i, (_, run) in enumerate(cases):
        try:
            run()
        except Exception as exc:
            rows[i].error = _error(exc)
        else:
            live[i] = []
        gc.collect()
    for _ in range(repeats):
        for i, values in live.items():
            try:
                values.append(cases[i][1]())
            except Exception as exc:
                rows[i].error = _error(exc)
            gc.collect()
    for i, values in live.items():
        if not rows[i].error:
            rows[i].value = convert(statistics.median(values))
            ends = sorted((convert(min(values)), convert(max(values))))
            rows[i].low, rows[i].high = ends
    return rows


def attempt(report: Report, row: Row, measure: Callable[[], float]) -> Row:
    """Fill ``row.value`` from ``measure()``; a failure is recorded, not raised.

    Rows of bgtasks parts that are still placeholders (or broken) must not stop
    the other rows: the error goes into the table instead.
    """
    try:
        row.value = measure()
    except Exception as exc:
        row.error = _error(exc)
    return report.add(row)


# --- comparing and judging ----------------------------------------------------


def with_overheads(rows: list[Row], bare: Row | None) -> None:
    """Set each row's overhead: its µs per call minus the bare call's."""
    if bare is None or not bare.ok:
        return
    assert bare.value is not None
    for row in rows:
        if row.ok:
            assert row.value is not None
            row.overhead = row.value - bare.value


def judge(
    row: Row | None,
    goal: str,
    met: bool | None,
    ratio: float | None = None,
    ratio_of: str = "",
) -> None:
    """Attach a goal and its verdict to ``row`` (``met=None``: cannot judge)."""
    if row is None:
        return
    row.goal = goal
    if ratio is not None:
        row.ratio, row.ratio_of = ratio, ratio_of
    if met is None:
        row.status = "n/a"
    else:
        row.status = "met" if met else "MISSED"


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None when either is missing or ``b`` is not positive."""
    if a is None or b is None or b <= 0:
        return None
    return a / b
