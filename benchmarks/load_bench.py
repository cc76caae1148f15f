"""Section 4c: HTTP load on a FastAPI endpoint that adds one background task.

uvicorn serves ``_load_app.py`` (one worker, asyncio, on 127.0.0.1) in a
subprocess and ``wrk`` loads one endpoint at a time with 50 connections:
plain ``BackgroundTasks`` with a no-op task, the same task tracked with
``manager.add_task(background_tasks, ...)``, a tracked task under ``@logged
@retry @timeout`` that calls ``set_progress`` once, and, for what FastAPI's
dependency machinery costs, a tracked task through the ``TrackedTasks``
dependency (a yield dependency) beside plain ``BackgroundTasks`` behind an
empty yield dependency. The endpoints take turns for each repeat, so a busy
phase of a shared machine hits them all; each row is the median of the
repeats with its spread (min..max), and the ratios are against plain in the
same round. At the end
no tracked task may be left PENDING or RUNNING, and none may have failed.

Beside requests/s and p99, each endpoint's server CPU time per request (user +
system time of the uvicorn process over the run, from ``/proc``): on a shared
machine it moves far less than requests/s does, and its ratio is what the
requests/s ratio would be on a core of the server's own.

On a machine with two cores or more, uvicorn is pinned to the first core and
wrk to the second (``taskset``), so they do not take turns on one core.

Needs ``wrk`` (Debian: ``apt-get install wrk``); without it the section says
so and is skipped. ``BGTASKS_LOAD_SECONDS`` sets each run's length (default 5 s,
2 s with ``--quick``; the issue's figures used 20 s). Standalone:
``python benchmarks/load_bench.py --seconds 20 --repeats 3``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from _harness import Config, Report, Row, judge

HERE = Path(__file__).resolve().parent
CONNECTIONS = 50
ENDPOINTS = {
    "plain BackgroundTasks, no-op task": "/plain",
    "manager.add_task, no-op task": "/tracked",
    "manager.add_task, @logged @retry @timeout + set_progress": "/decorated",
    "TrackedTasks dependency, no-op task": "/dependency",
    "plain BackgroundTasks behind an empty yield dependency": "/yield-dependency",
}
PLAIN, TRACKED, DECORATED, _, _ = ENDPOINTS


@dataclass(frozen=True)
class Run:
    """What one wrk run measured."""

    rps: float
    p99_ms: float
    errors: int  # socket errors and non-2xx responses
    cpu_us: float  # the server's CPU time per request (user + system)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pinned(argv: list[str], core: int) -> list[str]:
    """Pin to one core when taskset exists and there are two cores to share."""
    taskset = shutil.which("taskset")
    if taskset is None or (os.cpu_count() or 1) < 2:
        return argv
    return [taskset, "-c", str(core), *argv]


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as response:
        body: bytes = response.read()
        return body


@contextlib.contextmanager
def _server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Start uvicorn on a free loopback port; yield its base URL and process."""
    port = _free_port()
    argv = [sys.executable, "-m", "uvicorn", "--app-dir", str(HERE)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    argv += ["--loop", "asyncio", "--log-level", "warning", "--no-access-log"]
    process = subprocess.Popen(_pinned([*argv, "_load_app:app"], 0))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(base + "/stats")
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("uvicorn did not start") from None
                time.sleep(0.1)
        yield base, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _parse(output: str, cpu_seconds: float) -> Run:
    """Requests/s, the 99th percentile and the errors from ``wrk --latency``."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s)\b", output, re.MULTILINE)
    if rps is None or p99 is None or total is None:
        raise RuntimeError(f"unexpected wrk output: {output[-200:]!r}")
    errors = sum(
        int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output)
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    if non_2xx is not None:
        errors += int(non_2xx.group(1))
    p99_ms = float(p99.group(1)) * _UNITS[p99.group(2)]
    cpu_us = cpu_seconds / max(int(total.group(1)), 1) * 1e6
    return Run(float(rps.group(1)), p99_ms, errors, cpu_us)


def _cpu_seconds(process: subprocess.Popen[bytes]) -> float:
    """The process's user + system CPU time so far (0 where /proc is missing)."""
    try:
        stat = Path(f"/proc/{process.pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()  # after the command's name
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(wrk: str, url: str, seconds: float, server: subprocess.Popen[bytes]) -> Run:
    argv = [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--latency", url]
    cpu = _cpu_seconds(server)
    done = subprocess.run(
        _pinned(argv, 1),
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return _parse(done.stdout, _cpu_seconds(server) - cpu)


def _rss_kib(process: subprocess.Popen[bytes]) -> int | None:
    try:
        status = Path(f"/proc/{process.pid}/status").read_text(encoding="utf-8")
    except OSError:
        return None
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return None if found is None else int(found.group(1))


def _settled(base: str) -> dict[str, int]:
    """The manager's counts once the last background tasks have run."""
    deadline = time.monotonic() + 10
    while True:
        counts: dict[str, int] = json.loads(_get(base + "/stats"))
        if counts["pending"] + counts["running"] == 0 or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def measure(
    seconds: float, repeats: int
) -> tuple[dict[str, list[Run]], dict[str, int], tuple[int | None, int | None]]:
    """Run every endpoint ``repeats`` times; return the runs, counts and RSS."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    runs: dict[str, list[Run]] = {name: [] for name in ENDPOINTS}
    with _server() as (base, process):
        for path in ENDPOINTS.values():  # warm-up: imports, caches, retention
            _wrk(wrk, base + path, 1, process)
        rss_before = _rss_kib(process)
        for _ in range(repeats):
            for name, path in ENDPOINTS.items():
                runs[name].append(_wrk(wrk, base + path, seconds, process))
        counts = _settled(base)
        rss_after = _rss_kib(process)
    return runs, counts, (rss_before, rss_after)


def _spread(values: list[float], digits: int = 0) -> str:
    return f"spread {min(values):,.{digits}f}..{max(values):,.{digits}f}"


def run(report: Report, cfg: Config) -> None:
    seconds = float(os.environ.get("BGTASKS_LOAD_SECONDS", "2" if cfg.quick else "5"))
    add_rows(report, seconds, 2 if cfg.quick else 3)


def add_rows(report: Report, seconds: float, repeats: int) -> None:
    """Measure, then add the section's rows to ``report``."""
    section = (
        f"4c. HTTP load: uvicorn + FastAPI, wrk -c{CONNECTIONS}, {seconds:g} s x "
        f"{repeats} per endpoint"
    )
    try:
        runs, counts, rss = measure(seconds, repeats)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        row = report.add(Row(section, "tracked add_task under load", unit="req/s"))
        row.error = f"skipped: {exc}"[:80]
        print(f"load bench skipped: {exc}", file=sys.stderr)
        return
    plain = runs[PLAIN]
    for name, values in runs.items():
        rps = [r.rps for r in values]
        p99 = [r.p99_ms for r in values]
        row = report.add(Row(section, f"{name}: requests/s", unit="req/s"))
        row.value = statistics.median(rps)
        row.note = _spread(rps)
        if any(r.errors for r in values):
            row.note += f"; {sum(r.errors for r in values)} errors"
        tail = report.add(Row(section, f"{name}: p99 latency", unit="ms"))
        tail.value = statistics.median(p99)
        tail.note = _spread(p99, 1)
        cpu = [r.cpu_us for r in values]
        used = report.add(Row(section, f"{name}: server CPU", unit="µs/request"))
        used.value = statistics.median(cpu)
        used.note = _spread(cpu)
        if values is plain:
            continue
        cpu_ratios = [r.cpu_us / p.cpu_us for r, p in zip(values, plain, strict=True)]
        used.ratio, used.ratio_of = statistics.median(cpu_ratios), "plain"
        used.overhead = used.value - statistics.median(r.cpu_us for r in plain)
        used.note += f"; ratio {_spread(cpu_ratios, 2)}"
        # Ratios per round (the runs of one round are back to back), then median.
        rps_ratios = [r.rps / p.rps for r, p in zip(values, plain, strict=True)]
        p99_ratios = [r.p99_ms / p.p99_ms for r, p in zip(values, plain, strict=True)]
        row.ratio, row.ratio_of = statistics.median(rps_ratios), "plain"
        row.note += f"; ratio {_spread(rps_ratios, 2)}"
        tail.ratio, tail.ratio_of = statistics.median(p99_ratios), "plain"
        tail.note += f"; ratio {_spread(p99_ratios, 2)}"
        if name == TRACKED:
            judge(row, ">= 0.9x plain requests/s", row.ratio >= 0.9)
            judge(tail, "<= 1.3x plain p99", tail.ratio <= 1.3)
        elif name == DECORATED:
            judge(row, ">= 0.8x plain requests/s", row.ratio >= 0.8)
    left = report.add(Row(section, "tracked tasks left PENDING or RUNNING", unit=""))
    left.value = counts["pending"] + counts["running"]
    left.note = f"failed {counts['failed']}, cancelled {counts['cancelled']}"
    judge(left, "0, none failed", left.value == 0 and counts["failed"] == 0)
    before, after = rss
    if before is not None and after is not None:
        mem = report.add(
            Row(section, "server RSS growth over the timed runs", unit="KiB")
        )
        mem.value = after - before
        mem.note = f"{before:,} -> {after:,} KiB"


def main() -> int:
    from _output import render

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per endpoint")
    args = parser.parse_args()
    report = Report(Config.make(quick=False))
    add_rows(report, args.seconds, args.repeats)
    print(render(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
