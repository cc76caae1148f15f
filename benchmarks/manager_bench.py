"""Section 4: TaskManager spawn-to-finish throughput, and tracked BackgroundTasks.

Each run starts a fresh event loop, then times from before the first spawn until
every task has finished (the task group, scheduler or manager has been exited
or drained, which is how an application ends them). Every run checks that all N
tasks really ran, so a manager that dropped or cancelled tasks could not look fast.

The steady-state rows (4b) run N tasks the way a busy application does, in
awaited batches (submit 10,000, wait until they have run, repeat), with the
garbage collector on and nothing frozen, so what finished tasks cost the
collector shows: up to a million tasks, with the default retention and with
retention keeping every record.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from _harness import Config, Report, Row, compare_runs, judge, ratio, set_spread
from starlette.background import BackgroundTasks

DRAIN = 600.0  # the manager's drain timeout: long enough never to cancel a task


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    async def task(self) -> None:
        self.n += 1


def _run(
    main: Callable[[_Counter, int], Awaitable[float]], n: int, backend: str
) -> float:
    """Seconds for one run of ``main``, after checking that it ran all ``n`` tasks."""
    counter = _Counter()

    async def entry() -> float:
        return await main(counter, n)

    elapsed = anyio.run(entry, backend=backend)
    if counter.n != n:
        raise RuntimeError(f"{counter.n} of {n} tasks ran")
    return elapsed


async def _task_group(counter: _Counter, n: int) -> float:
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(counter.task)
    return time.perf_counter() - t0


async def _trio_nursery(counter: _Counter, n: int) -> float:
    import trio

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(counter.task)
    return time.perf_counter() - t0


async def _aiojobs(counter: _Counter, n: int) -> float:
    import aiojobs

    t0 = time.perf_counter()
    scheduler = aiojobs.Scheduler(limit=None, wait_timeout=DRAIN)
    for _ in range(n):
        await scheduler.spawn(counter.task())
    await scheduler.wait_and_close()
    return time.perf_counter() - t0


async def _manager(counter: _Counter, n: int) -> float:
    from bgtasks import TaskManager

    t0 = time.perf_counter()
    async with TaskManager(drain_timeout=DRAIN) as manager:
        for _ in range(n):
            manager.spawn(counter.task)
    return time.perf_counter() - t0


def run(report: Report, cfg: Config) -> None:
    n = cfg.throughput_tasks

    def case(
        main: Callable[[_Counter, int], Awaitable[float]], backend: str
    ) -> Callable[[], float]:
        return lambda: _run(main, n, backend)

    def per_second(seconds: float) -> float:
        return n / seconds

    section = f"4. spawn-to-finish, {n:,} trivial async tasks (asyncio)"
    raw, jobs, ours = compare_runs(
        report,
        section,
        [
            ("raw anyio task group", case(_task_group, "asyncio")),
            ("aiojobs Scheduler(limit=None)", case(_aiojobs, "asyncio")),
            ("bgtasks TaskManager.spawn", case(_manager, "asyncio")),
        ],
        repeats=cfg.throughput_repeats,
        unit="tasks/s",
        convert=per_second,
    )
    r = ratio(ours.value, raw.value) if ours.ok else None
    judge(ours, ">= 0.8x raw task group", None if r is None else r >= 0.8, r, "raw")
    if jobs.ok:
        jobs.ratio, jobs.ratio_of = ratio(jobs.value, raw.value), "raw"
    vs = report.add(Row(section, "TaskManager / aiojobs", unit="x"))
    vs.value = ratio(ours.value, jobs.value) if ours.ok and jobs.ok else None
    if vs.value is None:
        vs.error = "needs both rows"
    else:
        judge(vs, "> 1.0x (faster than aiojobs)", vs.value > 1.0)

    section = f"4. spawn-to-finish, {n:,} trivial async tasks (trio)"
    raw, native, ours = compare_runs(
        report,
        section,
        [
            ("raw anyio task group", case(_task_group, "trio")),
            ("raw trio nursery", case(_trio_nursery, "trio")),
            ("bgtasks TaskManager.spawn", case(_manager, "trio")),
        ],
        repeats=cfg.throughput_repeats,
        unit="tasks/s",
        convert=per_second,
    )
    if native.ok:
        native.ratio, native.ratio_of = ratio(native.value, raw.value), "raw"
    r = ratio(ours.value, raw.value) if ours.ok else None
    judge(ours, ">= 0.8x raw task group", None if r is None else r >= 0.8, r, "raw")
    _tracked_add_task(report, cfg)
    run_steady(report, cfg)
    run_wait(report, cfg)


# --- tracked add_task against plain BackgroundTasks -------------------------


# --- 4b. steady state: awaited batches, GC on, no gc.freeze() -----------------

BATCH = 10_000  # tasks submitted at once, then waited for
KEEP_FOREVER = 10 * 365 * 24 * 3600.0  # finished_ttl for "keep all"


class _Batches(_Counter):
    """Counts the tasks that ran and wakes the submitter when a batch is done."""

    __slots__ = ("done", "target")

    def __init__(self) -> None:
        super().__init__()
        self.target = 0
        self.done: anyio.Event | None = None

    def start(self, size: int) -> anyio.Event:
        self.target = self.n + size
        done = self.done = anyio.Event()
        return done

    async def task(self) -> None:
        self.n += 1
        if self.n == self.target:
            assert self.done is not None
            self.done.set()


def _batches(n: int) -> list[int]:
    return [min(BATCH, n - start) for start in range(0, n, BATCH)]


async def _steady_raw(counter: _Counter, n: int) -> float:
    assert isinstance(counter, _Batches)
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for size in _batches(n):
            done = counter.start(size)
            for _ in range(size):
                tg.start_soon(counter.task)
            await done.wait()
    return time.perf_counter() - t0


def _steady_manager(
    max_finished: int | None, *, wait_each: bool = False
) -> Callable[[_Counter, int], Awaitable[float]]:
    """A TaskManager run; ``max_finished`` None: the default retention."""

    async def main(counter: _Counter, n: int) -> float:
        from bgtasks import TaskManager

        assert isinstance(counter, _Batches)
        options: dict[str, Any] = {}
        if max_finished is not None:
            options = {"max_finished": max_finished, "finished_ttl": KEEP_FOREVER}
        t0 = time.perf_counter()
        async with TaskManager(drain_timeout=DRAIN, **options) as manager:
            spawn = manager.spawn
            for size in _batches(n):
                done = counter.start(size)
                if wait_each:
                    for handle in [spawn(counter.task) for _ in range(size)]:
                        await handle.wait()
                else:
                    for _ in range(size):
                        spawn(counter.task)
                    await done.wait()
            if max_finished is not None and len(manager.list(limit=n)) < n:
                raise RuntimeError("retention dropped records it should keep")
        return time.perf_counter() - t0

    return main


def _steady_run(
    main: Callable[[_Counter, int], Awaitable[float]], n: int, backend: str
) -> float:
    counter = _Batches()

    async def entry() -> float:
        return await main(counter, n)

    elapsed = anyio.run(entry, backend=backend)
    if counter.n != n:
        raise RuntimeError(f"{counter.n} of {n} tasks ran")
    return elapsed


def _steady_repeats(cfg: Config, n: int) -> int:
    if cfg.quick:
        return 3
    return {1_000: 15, 10_000: 7, 100_000: 5}.get(n, 3)


def _steady_sizes(cfg: Config) -> tuple[int, ...]:
    if cfg.quick:
        return (1_000, 10_000, 100_000)
    return (1_000, 10_000, 100_000, 1_000_000)


def run_steady(report: Report, cfg: Config) -> None:
    """Rows 4b: raw task group vs TaskManager from 1k to 1M tasks, per backend.

    The cases of one size run interleaved, once each per repeat, after one
    warm-up round; each TaskManager row's ratio is the median of the per-repeat
    ratios to the raw task group run beside it, with their spread in the note.
    """
    for backend in ("asyncio", "trio"):
        for n in _steady_sizes(cfg):
            repeats = _steady_repeats(cfg, n)
            section = (
                f"4b. steady state, {n:,} tasks in awaited batches of "
                f"{BATCH:,} ({backend}, GC on, no gc.freeze, {repeats} repeats)"
            )
            cases: list[tuple[str, Callable[[_Counter, int], Awaitable[float]]]] = [
                ("raw anyio task group", _steady_raw),
                ("TaskManager, default retention (10,000)", _steady_manager(None)),
                (f"TaskManager, keeping all {n:,} records", _steady_manager(n)),
            ]
            if n <= 100_000:
                cases.append(
                    (
                        "TaskManager, await handle.wait() of each",
                        _steady_manager(None, wait_each=True),
                    )
                )
            _steady_section(
                report, section, cases, n=n, backend=backend, repeats=repeats
            )


def _steady_section(
    report: Report,
    section: str,
    cases: list[tuple[str, Callable[[_Counter, int], Awaitable[float]]]],
    *,
    n: int,
    backend: str,
    repeats: int,
) -> None:
    rows = [report.add(Row(section, name, unit="tasks/s")) for name, _ in cases]
    seconds: list[list[float]] = [[] for _ in cases]
    try:
        for _, main in cases:  # warm-up: one batch at most
            _steady_run(main, min(n, BATCH), backend)
        for _ in range(repeats):
            for i, (_, main) in enumerate(cases):
                seconds[i].append(_steady_run(main, n, backend))
                gc.collect()
    except Exception as exc:  # a part not written yet, or broken: a table entry
        for row in rows:
            row.error = f"{type(exc).__name__}: {exc}"[:80]
        return
    raw = seconds[0]
    for i, row in enumerate(rows):
        timed = seconds[i]
        set_spread(row, [n / s for s in timed])
        if i == 0:
            continue
        ratios = [r / s for r, s in zip(raw, timed, strict=True)]  # speed ratios
        row.ratio, row.ratio_of = statistics.median(ratios), "raw"
        row.note = f"ratio {min(ratios):.2f}..{max(ratios):.2f}"
        if "handle.wait()" in row.name:
            continue  # shown for what waiting costs; no goal
        goal = 0.8 if "keeping all" in row.name else 0.9
        judge(row, f">= {goal}x raw task group", row.ratio >= goal)


# --- 4c. waiting on a task that has finished ----------------------------------

WAIT_LOOPS = 100_000


async def _noop() -> None:
    return None


def _spread(samples: list[float]) -> str:
    return f"spread {min(samples):.2f}..{max(samples):.2f}"


async def _add_and_run(add: Callable[[BackgroundTasks], object], n: int) -> float:
    """CPU seconds for ``n`` requests that each add one task and run it, per task."""
    t0 = time.process_time()
    for _ in range(n):
        tasks = BackgroundTasks()
        add(tasks)
        await tasks()
    return (time.process_time() - t0) / n


async def _add_only(add: Callable[[BackgroundTasks], object], n: int) -> float:
    """CPU seconds per ``add_task`` call alone; the tasks run afterwards, untimed."""
    requests = [BackgroundTasks() for _ in range(n)]
    t0 = time.process_time()
    for tasks in requests:
        add(tasks)
    elapsed = (time.process_time() - t0) / n
    for tasks in requests:
        await tasks()
    return elapsed


def _tracked_add_task(report: Report, cfg: Config) -> None:
    """Per-task cost of a tracked ``add_task`` over plain ``BackgroundTasks``.

    Shaped like requests: each adds one no-op task to its own BackgroundTasks
    and runs it, as Starlette does after the response, with the collector on
    and the default retention. The repeats alternate plain and tracked, so a
    busy phase of a shared machine hits both; each row is the median with its
    spread (min..max) over the repeats, in µs of process CPU time per task
    (``time.process_time``: what other processes on a shared machine take is
    not counted, and the loop runs no I/O that would hide in it).
    """
    from bgtasks import TaskManager

    n = cfg.throughput_tasks
    repeats = cfg.repeats

    def plain(tasks: BackgroundTasks) -> None:
        tasks.add_task(_noop)

    async def main(samples: dict[str, list[float]]) -> None:
        async with TaskManager(drain_timeout=DRAIN) as manager:

            def tracked(tasks: BackgroundTasks) -> None:
                manager.add_task(tasks, _noop)

            shapes = {
                "plain add_task + run": (_add_and_run, plain),
                "bgtasks manager.add_task + run (tracked)": (_add_and_run, tracked),
                "plain add_task call": (_add_only, plain),
                "bgtasks manager.add_task call": (_add_only, tracked),
            }
            for measure, add in shapes.values():  # warm-up
                await measure(add, min(n, 2_000))
            for _ in range(repeats):
                for name, (measure, add) in shapes.items():
                    gc.collect()
                    samples.setdefault(name, []).append(await measure(add, n))
            if manager.list(state="pending"):
                raise RuntimeError("tracked tasks left PENDING")

    for backend in ("asyncio", "trio"):
        samples: dict[str, list[float]] = {}
        section = (
            f"4. Starlette BackgroundTasks: {n:,} requests with one no-op task "
            f"({backend})"
        )
        try:
            anyio.run(main, samples, backend=backend)
        except Exception as exc:  # a table entry, not a crash
            row = report.add(Row(section, "tracked add_task", unit="µs/task"))
            row.error = f"{type(exc).__name__}: {exc}"[:80]
            continue
        rows: dict[str, Row] = {}
        for name, values in samples.items():
            micro = [v * 1e6 for v in values]
            row = rows[name] = report.add(Row(section, name, unit="µs/task"))
            row.value = statistics.median(micro)
            row.note = _spread(micro)
        for plain_name, tracked_name in (
            ("plain add_task + run", "bgtasks manager.add_task + run (tracked)"),
            ("plain add_task call", "bgtasks manager.add_task call"),
        ):
            base, ours = rows[plain_name], rows[tracked_name]
            assert base.value is not None
            assert ours.value is not None
            ours.overhead = ours.value - base.value
            ours.ratio, ours.ratio_of = ratio(ours.value, base.value), "plain"
        if backend == "asyncio":
            for name in (
                "bgtasks manager.add_task + run (tracked)",
                "bgtasks manager.add_task call",
            ):
                row = rows[name]
                assert row.overhead is not None
                judge(row, "<= 5 µs per task over plain", row.overhead <= 5.0)


def run_wait(report: Report, cfg: Config) -> None:
    """Rows 4c: µs per ``await handle.wait()`` (and friends) on a finished task.

    Timed in one event loop with the collector off, as the micro-benchmarks
    are; the median of the repeats, with their spread.
    """
    for backend in ("asyncio", "trio"):
        section = f"4c. reading a finished task, µs per call ({backend}, GC off)"
        names = [
            "await a trivial coroutine (bare)",
            "await handle.wait()",
            "await manager.wait(task_id)",
            "handle.info()",
            "manager.get(task_id)",
        ]
        rows = [report.add(Row(section, name)) for name in names]
        try:
            samples = anyio.run(_wait_samples, cfg.repeats, backend=backend)
        except Exception as exc:
            for row in rows:
                row.error = f"{type(exc).__name__}: {exc}"[:80]
            continue
        for row, values in zip(rows, samples, strict=True):
            set_spread(row, values)
        wait = rows[1]
        assert wait.value is not None
        judge(wait, "<= 1 µs", wait.value <= 1.0)


async def _wait_samples(repeats: int) -> list[list[float]]:
    from bgtasks import TaskManager

    loops = range(WAIT_LOOPS)

    async def timed_async(call: Callable[[], Awaitable[object]]) -> float:
        t0 = time.perf_counter_ns()
        for _ in loops:
            await call()
        return (time.perf_counter_ns() - t0) / 1e3 / WAIT_LOOPS

    def timed_sync(call: Callable[[], object]) -> float:
        t0 = time.perf_counter_ns()
        for _ in loops:
            call()
        return (time.perf_counter_ns() - t0) / 1e3 / WAIT_LOOPS

    async with TaskManager() as manager:
        handle = manager.spawn(_noop)
        await handle.wait()
        task_id = handle.id
        calls: list[Callable[[], Any]] = [
            _noop,
            handle.wait,
            lambda: manager.wait(task_id),
        ]
        sync: list[Callable[[], object]] = [handle.info, lambda: manager.get(task_id)]
        samples: list[list[float]] = [[] for _ in range(len(calls) + len(sync))]
        enabled = gc.isenabled()
        gc.disable()
        try:
            for _ in range(1 + repeats):  # the first round is the warm-up
                for i, call in enumerate(calls):
                    samples[i].append(await timed_async(call))
                for i, func in enumerate(sync, len(calls)):
                    samples[i].append(timed_sync(func))
        finally:
            if enabled:
                gc.enable()
    return [values[1:] for values in samples]
