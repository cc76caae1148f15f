"""A/B: the same benchmarks on two versions of bgtasks, interleaved.

Usage: ``python benchmarks/ab.py --base REV [--rounds N] [--only NAME ...]
[--cpu-time]``
(``nox -s bench_ab -- --base REV`` runs it with the peers installed).

Each round runs ``run.py --quick`` once against the working tree's ``src`` and
once against ``REV``'s (a temporary ``git worktree``), in alternating order, so
that a machine that gets busier or quieter affects both sides alike. The bench
scripts are always the working tree's: both sides are measured by the same
code, through bgtasks' public API only. It prints, per row, the median ratio
new/base of the per-round pairs and their spread (min..max). Nothing is
asserted: a ratio is read, not tested.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _run(
    src: Path, only: list[str], out: Path, *, cpu_time: bool = False
) -> dict[tuple[str, str], float]:
    """Run run.py --quick with ``src`` first on the path; return value per row."""
    env = dict(os.environ, PYTHONPATH=str(src))
    argv = [sys.executable, str(HERE / "run.py"), "--quick", "--json", str(out)]
    if cpu_time:
        argv.append("--cpu-time")
    for name in only:
        argv += ["--only", name]
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL)
    rows = json.loads(out.read_text(encoding="utf-8"))["rows"]
    return {
        (row["section"], row["name"]): float(row["value"])
        for row in rows
        if row["value"] is not None and not row["error"]
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the git revision to compare")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved pairs")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="a run.py suite (repeatable); default: decorators, retry, manager",
    )
    parser.add_argument(
        "--cpu-time", action="store_true", help="pass --cpu-time to run.py"
    )
    args = parser.parse_args(argv)
    only = args.only or ["decorators", "retry", "manager"]
    with tempfile.TemporaryDirectory(prefix="bgtasks-ab-") as tmp:
        base_tree = Path(tmp) / "base"
        tree = [str(base_tree), args.base]
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", *tree],
            check=True,
        )
        try:
            ratios: dict[tuple[str, str], list[float]] = {}
            # Each row over its section's bare call in the same run: a run on
            # a busier machine slows both, so this ratio drifts less.
            relative: dict[tuple[str, str], list[float]] = {}
            for i in range(args.rounds):
                sides = [("new", ROOT / "src"), ("base", base_tree / "src")]
                if i % 2:
                    sides.reverse()
                values = {
                    side: _run(
                        src, only, Path(tmp) / f"{side}.json", cpu_time=args.cpu_time
                    )
                    for side, src in sides
                }
                new_v, base_v = values["new"], values["base"]
                for key, new in new_v.items():
                    base = base_v.get(key)
                    if base:
                        ratios.setdefault(key, []).append(new / base)
                    bare = (key[0], "bare call")
                    if (
                        base
                        and key[1] != "bare call"
                        and bare in new_v
                        and bare in base_v
                    ):
                        relative.setdefault(key, []).append(
                            (new / new_v[bare]) / (base / base_v[bare])
                        )
                print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", tree[0]],
                check=False,
            )
    print(f"new/base over {args.rounds} interleaved pairs (below 1: new is faster)")
    print(f"{'section':<28} {'row':<44} {'median':>7}  {'spread':<10}  per bare call")
    for key, found in ratios.items():
        section, name = key
        line = (
            f"{section[:28]:<28} {name[:44]:<44} {statistics.median(found):>7.2f}"
            f"  {min(found):.2f}..{max(found):.2f}"
        )
        rel = relative.get(key)
        if rel:
            line += f"  {statistics.median(rel):.2f} ({min(rel):.2f}..{max(rel):.2f})"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
