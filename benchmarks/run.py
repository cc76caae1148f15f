"""Benchmark bgtasks side by side with the libraries users would pick instead.

Usage: ``python benchmarks/run.py [--quick] [--cpu-time] [--only NAME ...]
[--json PATH]`` (``nox -s bench`` runs it in its own environment with the peers
installed).

Prints one table and writes the same rows as JSON to ``benchmarks/results.json``.
Absolute times drift on a shared machine; the ratios measured in one run are the
figures to compare, and ``--cpu-time`` leaves out the time other processes hold
the CPU. Nothing here is a test: no time is asserted anywhere.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script from anywhere: find the siblings
    sys.path.insert(0, str(HERE))

from _harness import Config, Report, use_cpu_time  # noqa: E402
from _output import machine, render, render_markdown, to_json  # noqa: E402

# Each suite's module, imported only when it runs: a suite may need a part
# that an older bgtasks lacks (benchmarks/ab.py runs them on older revisions).
SUITES: dict[str, str] = {
    "retry": "retry_bench",
    "decorators": "decorators_bench",
    "manager": "manager_bench",
    "load": "load_bench",
    "backend": "backend_bench",
    "memory": "memory_bench",
    "dashboard": "dashboard_bench",
    "redis": "redis_bench",
    "otel": "otel_bench",
}


def _suite(name: str) -> Callable[[Report, Config], None]:
    run: Callable[[Report, Config], None] = importlib.import_module(SUITES[name]).run
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer repeats and smaller sizes (well under a minute)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SUITES),
        metavar="NAME",
        help=f"run only this suite (repeatable): {', '.join(SUITES)}",
    )
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time the per-call benchmarks in process CPU time (a shared machine)",
    )
    parser.add_argument(
        "--json",
        default=str(HERE / "results.json"),
        help="where to write the rows as JSON",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="also print the table as Markdown (for docs/performance.md)",
    )
    args = parser.parse_args(argv)

    # Retries log at WARNING in bgtasks and stamina: keep the records (their
    # cost is part of the comparison) but send them nowhere instead of stderr.
    logging.getLogger().addHandler(logging.NullHandler())

    if args.cpu_time:
        use_cpu_time()
    cfg = Config.make(quick=args.quick)
    report = Report(cfg)
    info = machine()
    print(
        f"bgtasks benchmarks{' (--quick)' if cfg.quick else ''}: Python "
        f"{info['python']}, {info['cpu']}, {info['cores']} cores"
    )
    print(
        "versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        flush=True,
    )
    for name in args.only or list(SUITES):
        t0 = time.perf_counter()
        print(f"running {name} ...", file=sys.stderr, flush=True)
        _suite(name)(report, cfg)
        print(
            f"  {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True
        )
    print()
    print(render(report))
    if args.markdown:
        print()
        print(render_markdown(report))
    to_json(report, args.json)
    missed = [r for r in report.rows if r.status == "MISSED"]
    not_run = [r for r in report.rows if r.error]
    print(
        f"\n{len(missed)} goal(s) missed, {len(not_run)} row(s) not run; "
        f"{time.perf_counter() - report.started:.0f} s; JSON: {args.json}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
