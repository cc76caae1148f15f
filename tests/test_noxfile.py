"""The noxfile picks the Pythons it runs on from what the machine has."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def noxfile() -> ModuleType:
    """The noxfile, imported without letting it change this process's environment."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)
        # Set, so the noxfile's pyenv and uv defaults leave them alone.
        mp.setenv("PYENV_VERSION", "system")
        mp.setenv("UV_PYTHON_DOWNLOADS", "never")
        spec = importlib.util.spec_from_file_location("noxfile", ROOT / "noxfile.py")
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module


def test_newest_present_python(noxfile: ModuleType) -> None:
    """With only 3.11 and 3.12 here, the one-Python sessions get 3.12."""
    found = {"3.11", "3.12"}
    newest = noxfile._newest_present(
        ["3.10", "3.11", "3.12", "3.13"], found.__contains__
    )
    assert newest == "3.12"


def test_no_python_present(noxfile: ModuleType) -> None:
    """With none here, the newest declared is asked for, so nox reports it missing."""
    newest = noxfile._newest_present(["3.10", "3.11"], lambda version: False)
    assert newest == "3.11"


def test_declared_pythons_come_from_the_classifiers(noxfile: ModuleType) -> None:
    """The tests session runs on each of the four declared Pythons."""
    assert noxfile.PYTHONS == ["3.10", "3.11", "3.12", "3.13"]


def test_this_python_runs(noxfile: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """The probe starts the interpreter this suite runs on, found on PATH."""
    bindir = str(Path(sys.executable).parent)
    monkeypatch.setenv("PATH", bindir + os.pathsep + os.environ["PATH"])
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert noxfile._runs(version) is True


def test_absent_python_does_not_run(noxfile: ModuleType) -> None:
    """The probe says no for a Python that no machine has."""
    assert noxfile._runs("2.1") is False


@pytest.mark.parametrize(
    ("environ", "error"),
    [
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({}, False),
        ({"CI": ""}, False),
        ({"CI": "false"}, False),
    ],
)
def test_missing_python_is_an_error_only_on_ci(
    noxfile: ModuleType, environ: dict[str, str], error: bool
) -> None:
    """On CI a missing Python fails the run; elsewhere its tests are skipped."""
    assert noxfile._error_on_missing(environ) is error
