"""RedisStore's per-call cost against the same number of raw coredis round trips.

Starts its own loopback redis-server (or uses ``--url``) and, on asyncio and
trio, times sequential calls: a first call's ``claim`` + ``complete`` against
a raw ``SET`` + ``GET``, and a replay (``claim`` of a completed key) and a
``get`` against one raw ``GET``. Each repeat times short interleaved chunks of
every kind and keeps each kind's fastest; the ratios are shown as median
(min..max) over the repeats.

    python benchmarks/redis_bench.py [--quick] [--url redis://127.0.0.1:6379/0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import coredis

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from _harness import Config, Report, Row, judge

from bgtasks import IdempotencyRecord, idempotent
from bgtasks.redis import RedisStore
from redis_server import CommandLog, RedisServer

VALUE = {"user": 42, "sent": True}
RECORD = IdempotencyRecord(VALUE, None, None)
CHUNKS = 10


async def _timed(calls: int, one: Callable[[int], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for i in range(calls):
        await one(i)
    return (time.perf_counter() - start) / calls * 1e6


async def _round_trips(
    log: CommandLog, prefix: str, call: Callable[[], Awaitable[object]]
) -> int:
    """The commands one call sent to Redis, from MONITOR: its round trips (a
    script's inner commands are not counted, as they are not round trips)."""
    log.sent(prefix)
    await call()
    return len(log.sent(prefix))


async def _measure(
    url: str, calls: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    store = RedisStore.from_url(url, prefix=prefix)
    run = uuid.uuid4().hex[:8]
    async with coredis.Redis.from_url(url, decode_responses=False) as raw:
        await raw.set("bench:raw", b'{"user":42,"sent":true}')

        async def raw_two(i: int) -> object:
            await raw.set(f"bench:raw:{i % 64}", b'{"user":42,"sent":true}')
            return await raw.get("bench:raw")

        async def raw_one(i: int) -> object:
            return await raw.get("bench:raw")

        async def first_call(i: int) -> object:
            key = f"b:{run}:{i}:{uuid.uuid4().hex}"
            claim = await store.claim(key, owner="o", lease=10, fingerprint=None)
            return await store.complete(
                key, owner="o", fence=claim.fence, record=RECORD, ttl=60
            )

        async def replay(i: int) -> object:
            return await store.claim("b:done", owner="x", lease=10, fingerprint=None)

        async def get(i: int) -> object:
            return await store.get("b:done")

        @idempotent(key="{key}", namespace=f"d{run}", store=store, lease=10, ttl=60)
        async def decorated(key: str) -> dict[str, object]:
            return VALUE

        async def decorated_first(i: int) -> object:
            return await decorated(f"{i}:{uuid.uuid4().hex}")

        async def decorated_replay(i: int) -> object:
            return await decorated("done")

        await decorated("done")
        where = urlsplit(url)
        log = CommandLog(where.port or 6379, where.hostname or "127.0.0.1")
        try:
            trips = {
                "decorated first call": await _round_trips(
                    log, prefix, lambda: decorated(uuid.uuid4().hex)
                ),
                "decorated replay": await _round_trips(
                    log, prefix, lambda: decorated("done")
                ),
            }
        finally:
            log.close()

        await first_call(0)
        done = await store.claim("b:done", owner="o", lease=10, fingerprint=None)
        await store.complete(
            "b:done", owner="o", fence=done.fence, record=RECORD, ttl=600
        )
        fns = {
            "raw2": raw_two,
            "first": first_call,
            "dfirst": decorated_first,
            "raw1": raw_one,
            "replay": replay,
            "dreplay": decorated_replay,
            "get": get,
        }
        for warm in fns.values():
            await _timed(200, warm)
        rows: dict[str, list[float]] = {name: [] for name in fns}
        chunk = max(1, calls // CHUNKS)
        for _ in range(repeats):
            # Short chunks, interleaved, the fastest of each kept: a busy
            # machine's noise then lands on both sides of every ratio alike.
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(CHUNKS):
                for name, fn in fns.items():
                    best[name] = min(best[name], await _timed(chunk, fn))
            for name in fns:
                rows[name].append(best[name])
    await store.aclose()
    return rows, trips


def _report(
    backend: str, measured: tuple[dict[str, list[float]], dict[str, int]]
) -> None:
    rows, trips = measured
    print(f"  round trips (MONITOR): {trips}")

    def ratios(ours: str, raw: str) -> str:
        r = [a / b for a, b in zip(rows[ours], rows[raw], strict=True)]
        return f"{statistics.median(r):.2f}x ({min(r):.2f}..{max(r):.2f})"

    med = {k: statistics.median(v) for k, v in rows.items()}
    lines = [
        ("raw SET+GET", "raw2", ""),
        ("claim+complete", "first", f"{ratios('first', 'raw2')} of raw SET+GET"),
        ("raw GET", "raw1", ""),
        ("claim (replay)", "replay", f"{ratios('replay', 'raw1')} of raw GET"),
        ("@idempotent first", "dfirst", f"{ratios('dfirst', 'raw2')} of raw SET+GET"),
        ("@idempotent replay", "dreplay", f"{ratios('dreplay', 'raw1')} of raw GET"),
        ("get", "get", f"{ratios('get', 'raw1')} of raw GET"),
    ]
    print(f"{backend}:")
    for label, name, note in lines:
        print(f"  {label:18s} {med[name]:7.1f} µs   {note}")


def run(report: Report, cfg: Config) -> None:
    """``nox -s bench``'s "redis" suite: @idempotent with RedisStore vs raw coredis."""
    section = "7. @idempotent with RedisStore (loopback redis-server)"
    calls, repeats = (300, 3) if cfg.quick else (2000, 7)
    server = RedisServer(Path(tempfile.mkdtemp(prefix="bgtasks-bench-"))).start()
    try:
        for backend in ("asyncio", "trio"):
            rows, trips = anyio.run(
                _measure, server.url, calls, repeats, backend=backend
            )
            for label, ours, raw, rt_key, most in (
                ("first call", "dfirst", "raw2", "decorated first call", 2),
                ("replay", "dreplay", "raw1", "decorated replay", 1),
            ):
                r = [a / b for a, b in zip(rows[ours], rows[raw], strict=True)]
                row = report.add(
                    Row(
                        section,
                        f"{label} ({backend})",
                        value=statistics.median(rows[ours]),
                        note=f"spread {min(r):.2f}..{max(r):.2f}; "
                        f"{trips[rt_key]} round trip(s) (MONITOR)",
                    )
                )
                judge(
                    row,
                    f"<= 1.3x raw coredis, <= {most} round trips",
                    statistics.median(r) <= 1.3 and trips[rt_key] <= most,
                    ratio=statistics.median(r),
                    ratio_of="raw coredis",
                )
    finally:
        server.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--url", help="an existing Redis to use (keys are prefixed)")
    args = parser.parse_args()
    calls, repeats = (300, 3) if args.quick else (2000, 7)
    server = None
    url = args.url
    if url is None:
        server = RedisServer(Path(tempfile.mkdtemp(prefix="bgtasks-bench-"))).start()
        url = server.url
    try:
        print(f"{calls} sequential calls x {repeats} repeats, {url}")
        for backend in ("asyncio", "trio"):
            _report(backend, anyio.run(_measure, url, calls, repeats, backend=backend))
    finally:
        if server is not None:
            server.kill()


if __name__ == "__main__":
    main()
