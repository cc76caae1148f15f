"""What the dashboard's live stream costs: CPU of the SSE fan-out under churn.

A TaskManager runs 1,000 short tasks a second (each reports progress once and
sleeps 0.2 s), with 10,000 finished records retained. The same churn is timed
with no dashboard open, then with 1 and 10 open event streams (the dashboard's
real ASGI route, read by in-process clients that count the bytes). The
dashboard's cost is the extra process CPU, in % of one core.

    python benchmarks/dashboard_bench.py [--seconds 5] [--backend asyncio]
        [--redis redis://localhost:6379/0]

With ``--redis``, the manager has a RedisBackend: the table then also counts
the change-stream entries the worker added (XADD) and the stream reads its
feed made, which must both be zero with no page open.

``benchmarks/run.py`` (``nox -s bench``) runs it as its "dashboard" suite: the
extra CPU with 10 open pages, on asyncio and trio.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
from _harness import Config, Report, Row, attempt, judge

from bgtasks import TaskManager, current_task
from bgtasks.starlette import dashboard_router

RATE = 1000  # tasks per second
BATCH = 10  # spawned together, every BATCH / RATE seconds


async def work() -> None:
    current_task().set_progress(0.5, "halfway")
    await anyio.sleep(0.2)


class Sink:
    """An SSE client that reads everything at once and counts it."""

    def __init__(self) -> None:
        self.bytes = 0
        self.events = 0
        self.gone = anyio.Event()

    async def run(self, app: Any) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/api/events",
            "raw_path": b"/api/events",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"bench")],
            "server": ("bench", 80),
            "client": ("127.0.0.1", 1),
        }

        async def receive() -> dict[str, Any]:
            await self.gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            body = message.get("body", b"")
            self.bytes += len(body)
            self.events += body.count(b"event: tasks")

        await app(scope, receive, send)


async def _feed_calls(url: str | None) -> tuple[int, int]:
    """XADD calls and change-stream reads (XRANGE) the Redis server counted."""
    if url is None:
        return 0, 0
    import coredis

    client: coredis.Redis[str] = coredis.Redis.from_url(url, decode_responses=True)
    async with client:
        stats = await client.info("commandstats")

    def calls(name: str) -> int:
        entry = stats.get(f"cmdstat_{name}")
        return int(entry["calls"]) if isinstance(entry, dict) else 0

    return calls("xadd"), calls("xrange")


async def churn(
    seconds: float, pages: int, redis_url: str | None = None
) -> tuple[float, float, int, int, tuple[int, int]]:
    """Run the churn with ``pages`` open streams; CPU s, wall s, bytes, events.

    The last item is the change-feed calls Redis counted (XADD, XRANGE).
    """
    backend = None
    if redis_url is not None:
        import secrets

        from bgtasks.redis import RedisBackend

        prefix = f"bench{secrets.token_hex(4)}"
        backend = RedisBackend.from_url(redis_url, prefix=prefix, max_finished=10_000)
    manager = TaskManager(
        max_finished=10_000, finished_ttl=None, log_failures=False, backend=backend
    )
    router = dashboard_router(manager)
    sinks = [Sink() for _ in range(pages)]
    async with manager, anyio.create_task_group() as tg:
        for sink in sinks:
            tg.start_soon(sink.run, router)
        # Fill the retained history first, as a long-running app has it.
        for _ in range(10_000):
            manager.spawn(anyio.sleep, 0)
        await anyio.sleep(1.0)
        calls = await _feed_calls(redis_url)
        cpu, wall = time.process_time(), time.perf_counter()
        start_bytes = sum(s.bytes for s in sinks)
        start_events = sum(s.events for s in sinks)
        ticks = int(seconds * RATE / BATCH)
        began = anyio.current_time()
        for tick in range(ticks):
            for _ in range(BATCH):
                manager.spawn(work)
            await anyio.sleep_until(began + (tick + 1) * BATCH / RATE)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = await _feed_calls(redis_url)
        sent = sum(s.bytes for s in sinks) - start_bytes
        events = sum(s.events for s in sinks) - start_events
        for sink in sinks:
            sink.gone.set()
    return cpu, wall, sent, events, (after[0] - calls[0], after[1] - calls[1])


def _share(seconds: float, pages: int, backend: str) -> float:
    """Process CPU during the churn, in % of one core."""
    cpu, wall, _, _, _ = anyio.run(churn, seconds, pages, backend=backend)
    return 100 * cpu / wall


def run(report: Report, cfg: Config) -> None:
    """The dashboard's cost: extra CPU with 10 open pages under 1,000 tasks/s."""
    section = "6. dashboard live stream"
    seconds = 1.0 if cfg.quick else 3.0
    for backend in ("asyncio", "trio"):
        row = Row(
            section,
            f"10 open pages, {RATE:,} tasks/s of churn ({backend})",
            unit="% of a core",
            note="extra CPU over the same churn with no page open",
        )
        attempt(
            report,
            row,
            lambda b=backend: _share(seconds, 10, b) - _share(seconds, 0, b),
        )
        if row.ok:
            assert row.value is not None
            judge(row, "<= 20% of one core", row.value <= 20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--redis", default=None, help="churn with a RedisBackend")
    args = parser.parse_args()
    print(
        f"Dashboard SSE fan-out, {RATE} tasks/s for {args.seconds:g} s, "
        f"10,000 records retained, {args.backend}"
        + (", RedisBackend" if args.redis else "")
    )
    print(
        f"{'open pages':>10}  {'CPU % of a core':>15}  {'dashboard':>9}  "
        f"{'KB/s per page':>13}  {'batches/s per page':>18}"
        + ("  XADD  XRANGE" if args.redis else "")
    )
    base = 0.0
    for pages in (0, 1, 10):
        cpu, wall, sent, events, (xadds, reads) = anyio.run(
            churn, args.seconds, pages, args.redis, backend=args.backend
        )
        share = 100 * cpu / wall
        if pages == 0:
            base = share
        extra = "-" if pages == 0 else f"+{share - base:.1f}"
        per_page = sent / wall / 1024 / pages if pages else 0.0
        rate = events / wall / pages if pages else 0.0
        print(
            f"{pages:>10}  {share:>15.1f}  {extra:>9}  {per_page:>13.0f}  {rate:>18.1f}"
            + (f"  {xadds:>4}  {reads:>6}" if args.redis else "")
        )


if __name__ == "__main__":
    main()
