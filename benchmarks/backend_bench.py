"""Section 4b: tracked tasks with RedisBackend, end to end, on a loopback redis-server.

Times from before the first spawn until every task has finished and its final
state is in Redis (the manager is left, which flushes and unregisters): the
figure an app sees. Every run checks that all N tasks ran and that Redis holds
N finished records. Starts its own ``redis-server`` (``--save "" --appendonly
no``) and stops it at the end; without the binary the rows say so.

The goal is absolute, so the same burst also runs, in the same repeats (one
of each per repeat, so a load swing hits all three), on a raw anyio task group
and on a TaskManager without a backend: how fast this machine runs the shape
at all, and what the mirror costs on top of the manager.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator

import anyio
from _harness import Config, Report, Row, judge

GOAL = 10_000.0  # tasks/s, issue #14


class _Counter:
    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 0

    async def task(self) -> None:
        self.n += 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", tmp]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)
            yield port
        finally:
            proc.terminate()
            proc.wait()


async def _spawn_all(port: int, n: int, prefix: str) -> float:
    import coredis

    from bgtasks import TaskManager
    from bgtasks.redis import RedisBackend

    counter = _Counter()
    backend = RedisBackend.from_url(
        f"redis://127.0.0.1:{port}/0", prefix=prefix, max_finished=max(n, 1)
    )
    t0 = time.perf_counter()
    async with TaskManager(backend=backend, drain_timeout=600) as manager:
        for _ in range(n):
            manager.spawn(counter.task)
    elapsed = time.perf_counter() - t0
    async with coredis.Redis(port=port, decode_responses=True) as client:
        written = await client.zcard(f"{{{prefix}}}:finished")
        await client.flushall()
    if counter.n != n or written != n:
        raise RuntimeError(f"{counter.n} of {n} tasks ran, {written} in Redis")
    return elapsed


async def _spawn_raw(n: int) -> float:
    counter = _Counter()
    t0 = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(n):
            tg.start_soon(counter.task)
    return time.perf_counter() - t0


async def _spawn_local(n: int) -> float:
    from bgtasks import TaskManager

    counter = _Counter()
    t0 = time.perf_counter()
    async with TaskManager(max_finished=max(n, 1), drain_timeout=600) as manager:
        for _ in range(n):
            manager.spawn(counter.task)
    return time.perf_counter() - t0


def _median(rates: list[float], row: Row) -> None:
    rates.sort()
    row.value = rates[len(rates) // 2]
    row.low, row.high = rates[0], rates[-1]


def run(report: Report, cfg: Config) -> None:
    n = cfg.throughput_tasks
    section = f"4b. tracked tasks with RedisBackend, {n:,} spawned, all in Redis"
    rows: dict[str, tuple[Row, Row, Row]] = {}
    for backend in ("asyncio", "trio"):
        raw = report.add(Row(section, f"raw anyio task group, same burst ({backend})"))
        local = report.add(Row(section, f"TaskManager, no backend ({backend})"))
        redis = report.add(Row(section, f"TaskManager + RedisBackend ({backend})"))
        rows[backend] = (raw, local, redis)
        for row in (raw, local, redis):
            row.unit = "tasks/s"
    try:
        with _redis_server() as port:
            for backend, (raw, local, redis) in rows.items():
                runs: tuple[Callable[[int], float], ...] = (
                    lambda r, b=backend: anyio.run(_spawn_raw, n, backend=b),
                    lambda r, b=backend: anyio.run(_spawn_local, n, backend=b),
                    lambda r, b=backend: anyio.run(
                        _spawn_all, port, n, f"bench{r}", backend=b
                    ),
                )
                for measure in runs:
                    measure(0)  # warm-up
                rates: list[list[float]] = [[], [], []]
                for r in range(1, cfg.throughput_repeats + 1):
                    for kind, measure in enumerate(runs):
                        rates[kind].append(n / measure(r))
                ratios = sorted(b / a for a, b in zip(rates[1], rates[2], strict=True))
                for row, kind_rates in zip((raw, local, redis), rates, strict=True):
                    _median(kind_rates, row)
                assert redis.value is not None
                judge(
                    redis,
                    f">= {GOAL:,.0f} tasks/s",
                    redis.value >= GOAL,
                    ratios[len(ratios) // 2],
                    "no backend",
                )
                redis.note = f"ratio {ratios[0]:.2f}..{ratios[-1]:.2f} of no backend"
    except Exception as exc:  # no redis-server, or coredis missing
        for kind_rows in rows.values():
            for row in kind_rows:
                if row.value is None:
                    row.error = f"{type(exc).__name__}: {exc}"
