"""Section 4: TaskManager spawn-to-finish throughput, and tracked BackgroundTasks.

Each run starts a fresh event loop, then times from before the first spawn until
every task has finished (the task group, scheduler or manager has been exited
or drained, which is how an application ends them). Every run checks that all N
tasks really ran, so a manager that dropped or cancelled tasks could not look fast.
"""

from __future__ import annotations

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


async def _plain_background(counter: _Counter, n: int) -> float:
    t0 = time.perf_counter()
    tasks = BackgroundTasks()
    for _ in range(n):
        tasks.add_task(counter.task)
    await tasks()
    return time.perf_counter() - t0


async def _tracked_background(counter: _Counter, n: int) -> float:
    from bgtasks import TaskManager

    async with TaskManager(drain_timeout=DRAIN) as manager:
        t0 = time.perf_counter()
        tasks = BackgroundTasks()
        for _ in range(n):
            manager.add_task(tasks, counter.task)
        await tasks()
        elapsed = time.perf_counter() - t0
    return elapsed


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

    section = f"4. Starlette BackgroundTasks, {n:,} async tasks run by one response"
    plain, tracked = compare_runs(
        report,
        section,
        [
            ("plain BackgroundTasks", case(_plain_background, "asyncio")),
            (
                "bgtasks manager.add_task (tracked)",
                case(_tracked_background, "asyncio"),
            ),
        ],
        repeats=cfg.throughput_repeats,
        unit="µs/task",
        convert=lambda seconds: seconds / n * 1e6,
    )
    if tracked.ok and plain.ok:
        assert tracked.value is not None
        assert plain.value is not None
        tracked.overhead = tracked.value - plain.value
        tracked.ratio, tracked.ratio_of = ratio(tracked.value, plain.value), "plain"
