"""How many tasks/s the Redis task mirror writes, on a loopback redis-server.

Usage: ``python benchmarks/redis_tasks_bench.py [-n 20000] [--repeats 5]``

Each task makes three transitions (pending, running, succeeded) through
``TaskMirror.push``, as the TaskManager will. Two shapes:

- batch: push every transition of N tasks, then one ``flush()``: the
  coalescing ceiling (a task that finished before the flush is one write);
- streaming: the mirror's loop runs while tasks arrive in bursts of 100 with a
  checkpoint between bursts, so flushes overlap the pushes as in an app.

Times cover the pushes and the writes until Redis acknowledged all of them,
with ``max_finished`` at N so trimming costs nothing here. On a shared machine
wall-clock rates swing with the load, so each line also gives the CPU time
per task of this process (the app's event loop) and of redis-server. Starts its own
``redis-server`` (``--save "" --appendonly no``) and stops it at the end.
Not a test: nothing is asserted about time.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import coredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from bgtasks._redis.tasks import TaskMirror

BURST = 100


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _push_task(mirror: TaskMirror, tid: str, now: float) -> None:
    pending = {"name": "job", "created": now, "state": "pending"}
    mirror.push(tid, pending, terminal=False)
    mirror.push(tid, {"state": "running", "started": now, "attempt": 1}, terminal=False)
    mirror.push(
        tid,
        {"state": "succeeded", "finished": now, "result": "null", "progress": 1.0},
        terminal=True,
    )


async def _batch(client: coredis.Redis[str], n: int, prefix: str) -> float:
    mirror = TaskMirror(client, prefix=prefix, max_finished=n, timeout=30)
    now = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        _push_task(mirror, f"t{i}", now)
    await mirror.flush()
    return time.perf_counter() - t0


async def _streaming(client: coredis.Redis[str], n: int, prefix: str) -> float:
    mirror = TaskMirror(client, prefix=prefix, max_finished=n, timeout=30)
    async with anyio.create_task_group() as tg:
        await tg.start(mirror.run)
        now = time.time()
        t0 = time.perf_counter()
        for start in range(0, n, BURST):
            for i in range(start, min(start + BURST, n)):
                _push_task(mirror, f"t{i}", now)
            await anyio.sleep(0)  # the app yields; the flusher takes what is there
        await mirror.flush()
        elapsed = time.perf_counter() - t0
        await mirror.close()
        tg.cancel_scope.cancel()
    return elapsed


async def _server_cpu(client: coredis.Redis[str]) -> float:
    info = await client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])  # type: ignore[arg-type]


Sample = tuple[float, float, float]  # tasks/s, our CPU µs/task, server CPU µs/task


async def _measure(port: int, n: int, repeats: int) -> dict[str, list[Sample]]:
    samples: dict[str, list[Sample]] = {"batch": [], "streaming": []}
    async with coredis.Redis(port=port, decode_responses=True) as client:
        for r in range(repeats + 1):  # the first round warms up
            for shape, bench in (("batch", _batch), ("streaming", _streaming)):
                await client.flushall()
                cpu, server = time.process_time(), await _server_cpu(client)
                seconds = await bench(client, n, f"bench{r}")
                cpu = (time.process_time() - cpu) / n * 1e6
                server = (await _server_cpu(client) - server) / n * 1e6
                written = await client.zcard(f"{{bench{r}}}:finished")
                if written != n:
                    raise RuntimeError(f"{shape}: {written} of {n} tasks written")
                if r:
                    samples[shape].append((n / seconds, cpu, server))
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=20_000, help="tasks per run")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server is not installed: nothing to measure", file=sys.stderr)
        return 1
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
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
            print(
                f"TaskMirror: {args.n:,} tasks x 3 transitions, {args.repeats} "
                f"repeats, Python {sys.version.split()[0]}, {os.cpu_count()} cores"
            )
            for backend in ("asyncio", "trio"):
                runs = anyio.run(_measure, port, args.n, args.repeats, backend=backend)
                for shape, samples in runs.items():
                    rates = [rate for rate, _, _ in samples]
                    ours = statistics.median(cpu for _, cpu, _ in samples)
                    server = statistics.median(cpu for _, _, cpu in samples)
                    print(
                        f"  {backend:8} {shape:10} median "
                        f"{statistics.median(rates):>7,.0f} tasks/s (min "
                        f"{min(rates):,.0f} .. max {max(rates):,.0f}); CPU per "
                        f"task: app {ours:.1f} µs, redis-server {server:.1f} µs"
                    )
        finally:
            proc.terminate()
            proc.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
