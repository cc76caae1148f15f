"""The public surface: ``__all__`` is honest and the version is the package's."""

from __future__ import annotations

import importlib
import types
from importlib.metadata import version

import pytest

import bgtasks

PUBLIC_MODULES = [
    "bgtasks",
    "bgtasks.backoff",
    "bgtasks.exceptions",
    "bgtasks.fastapi",
    "bgtasks.otel",
    "bgtasks.redis",
    "bgtasks.starlette",
    "bgtasks.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_sorted_and_complete(name: str) -> None:
    """Every public module lists a sorted ``__all__`` of names it really has."""
    module = importlib.import_module(name)
    exported = module.__all__
    assert exported == sorted(exported)
    for attr in exported:
        assert hasattr(module, attr), f"{name}.{attr} is listed but missing"


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_nothing_private_leaks(name: str) -> None:
    """No private name is exported, and every public attribute is in ``__all__``."""
    module = importlib.import_module(name)
    assert not [a for a in module.__all__ if a.startswith("_") and a != "__version__"]
    public = {
        a
        for a, v in vars(module).items()
        if not a.startswith("_")
        and not (isinstance(v, types.ModuleType) and a not in module.__all__)
        and a != "annotations"
    }
    assert public <= set(module.__all__)


def test_version_comes_from_metadata() -> None:
    """``bgtasks.__version__`` is the installed distribution's version."""
    assert bgtasks.__version__ == version("bgtasks")
