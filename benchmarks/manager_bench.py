"""Section 4: TaskManager spawn-to-finish throughput, and tracked BackgroundTasks.

Each run starts a fresh event loop, then times from before the first spawn until
every task has finished (the task group, scheduler or manager has been exited
or drained, which is how an application ends them). Every run checks that all N
tasks really ran, so a manager that dropped or cancelled tasks could not look fast.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable

import anyio
from _harness import Config, Report, Row, compare_runs, judge, ratio
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


# --- tracked add_task against plain BackgroundTasks -------------------------


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
