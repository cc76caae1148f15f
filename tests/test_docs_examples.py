"""Every ```python block in README.md and docs/ runs, so no example rots.

Blocks of one file share a namespace and run in order, like a reader pasting
them one after another. A block right after ``<!-- skip: reason -->`` is not run
(for fragments that need a live server or an SMTP host).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCK = re.compile(
    r"(?P<skip><!--\s*skip:[^>]*-->\s*\n)?^```python\n(?P<code>.*?)^```", re.S | re.M
)


def _blocks(page: Path) -> list[tuple[int, str]]:
    text = page.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start("code")) + 1, m.group("code"))
        for m in BLOCK.finditer(text)
        if not m.group("skip")
    ]


@contextmanager
def logging_restored() -> Iterator[None]:
    """Undo, after the block, what a page configures in logging (handlers, levels)."""
    loggers = [
        logging.getLogger(),
        *map(logging.getLogger, list(logging.root.manager.loggerDict)),
    ]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        for lg, (handlers, level, propagate, disabled) in zip(
            loggers, saved, strict=True
        ):
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate = propagate
            lg.disabled = disabled


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_examples_run(page: Path) -> None:
    """The page's examples execute without error, top to bottom."""
    namespace: dict[str, object] = {"__name__": f"docs_example_{page.stem}"}
    # A page that configures logging, as getting-started does, keeps it to itself.
    with logging_restored():
        for line, code in _blocks(page):
            # Pad with newlines so a traceback points at the line in the page.
            exec(compile("\n" * (line - 1) + code, str(page), "exec"), namespace)
