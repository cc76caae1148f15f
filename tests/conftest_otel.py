"""Leave out bgtasks.otel and its tests when the otel extra is not installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

HAVE_OTEL = all(
    importlib.util.find_spec(name) is not None
    for name in ("opentelemetry", "opentelemetry.instrumentation", "opentelemetry.sdk")
)
_NO_OTEL = "opentelemetry is not installed: install the otel extra and the SDK"
_ITEMS_NEEDING_OTEL = ("docs/opentelemetry.md", "bgtasks.otel", "test_otel.py")


def pytest_ignore_collect(collection_path: Path) -> bool | None:
    """Leave out the modules that import opentelemetry (and their doctests)."""
    if HAVE_OTEL:
        return None
    parts = collection_path.parts
    if "bgtasks" in parts and (collection_path.name == "otel.py" or "_otel" in parts):
        return True
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Skip the public-API checks of bgtasks.otel when it cannot be imported."""
    if HAVE_OTEL:
        return
    skip = pytest.mark.skip(reason=_NO_OTEL)
    for item in items:
        if any(name in item.nodeid for name in _ITEMS_NEEDING_OTEL):
            item.add_marker(skip)
