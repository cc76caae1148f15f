"""Output of a run: the text table, the Markdown table, the machine, the JSON."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from dataclasses import asdict
from typing import Any

from _harness import Report, Row


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "tasks/s" or abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _value(row: Row) -> str:
    """The row's value, with its spread over the repeats when it has one."""
    text = _fmt(row.value, row.unit)
    if row.low is not None and row.high is not None:
        text += f" ({_fmt(row.low, row.unit)}..{_fmt(row.high, row.unit)})"
    return text


def render(report: Report) -> str:
    """The table as text: one block per section, goals and verdicts on the right."""
    header = (
        "benchmark",
        "value (min..max)",
        "unit",
        "overhead µs",
        "ratio",
        "goal",
        "status",
    )
    lines: list[tuple[str, ...]] = []
    section = None
    for row in report.rows:
        if row.section != section:
            section = row.section
            lines.append((f"## {section}",))
        if row.error:
            lines.append(
                (
                    "  " + row.name,
                    "-",
                    row.unit,
                    "-",
                    "-",
                    row.goal,
                    f"not run: {row.error}",
                )
            )
            continue
        ratio_txt = f"{row.ratio:.2f}x {row.ratio_of}" if row.ratio is not None else ""
        lines.append(
            (
                "  " + row.name,
                _value(row),
                row.unit,
                _fmt(row.overhead) if row.overhead is not None else "",
                ratio_txt,
                row.goal,
                row.status + (f" ({row.note})" if row.note else ""),
            )
        )
    widths = [
        max(len(h), *(len(r[i]) for r in lines if len(r) > 1))
        for i, h in enumerate(header)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    out.append("  ".join("-" * w for w in widths))
    for r in lines:
        if len(r) == 1:
            out.append(r[0])
        else:
            out.append(
                "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            )
    return "\n".join(out)


def render_markdown(report: Report) -> str:
    """The same table as Markdown, for docs/performance.md."""
    out = [
        "| benchmark | value (min..max) | unit | overhead µs | ratio | goal | status |",
        "|---|---:|---|---:|---|---|---|",
    ]
    section = None
    for row in report.rows:
        if row.section != section:
            section = row.section
            out.append(f"| **{section}** | | | | | | |")
        if row.error:
            out.append(
                f"| {row.name} | - | {row.unit} | | | {row.goal} | "
                f"not run: {row.error} |"
            )
            continue
        ratio_txt = f"{row.ratio:.2f}x {row.ratio_of}" if row.ratio is not None else ""
        status = row.status + (f" ({row.note})" if row.note else "")
        overhead = _fmt(row.overhead) if row.overhead is not None else ""
        out.append(
            f"| {row.name} | {_value(row)} | {row.unit} | "
            f"{overhead} | {ratio_txt} | {row.goal} | {status} |"
        )
    return "\n".join(out)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """What the numbers were measured on and with."""
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "versions": {
            d: _version(d)
            for d in (
                "bgtasks",
                "anyio",
                "starlette",
                "tenacity",
                "stamina",
                "backoff",
                "aiojobs",
                "trio",
            )
        },
    }


def to_json(report: Report, path: str) -> None:
    data = {
        "machine": machine(),
        "config": asdict(report.config),
        "seconds": round(time.perf_counter() - report.started, 1),
        "rows": [
            {
                k: (None if isinstance(v, float) and math.isnan(v) else v)
                for k, v in asdict(row).items()
            }
            for row in report.rows
        ],
    }
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
