"""Worker processes started together, for the claims that span processes."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

__all__ = ["run_together"]


def run_together(script: str, *argv: str, timeout: float = 30) -> list[dict[str, Any]]:
    """Run ``script`` once on asyncio and once on trio, released at the same moment.

    Each process gets ``argv`` with its backend inserted after the first two
    arguments (``url prefix backend ...``), waits for a line on stdin before it
    starts, and prints one JSON report, which is returned in that order.
    """
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", script, *argv[:2], backend, *argv[2:]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for backend in ("asyncio", "trio")
    ]
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return [json.loads(worker.communicate(timeout=timeout)[0]) for worker in workers]
