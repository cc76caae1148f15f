"""Development sessions: `nox` runs lint, typecheck, tests and docs.

The tests run on each supported Python found here; nox skips, and names, the
missing ones, except on CI (`CI=true`), where a missing Python fails the run.
Every other session runs on the newest supported Python found.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "tests_lowest", "docs"]

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)


def _expose_pyenv_pythons() -> None:
    """Let nox find every Python that pyenv installed, not only the global one.

    pyenv's shims answer `python3.12` only for versions that are selected; a
    machine with pyenv and four installed Pythons would otherwise look like it
    had one. Outside pyenv this does nothing.
    """
    if "PYENV_VERSION" in os.environ or shutil.which("pyenv") is None:
        return
    out = subprocess.run(
        ["pyenv", "versions", "--bare", "--skip-aliases"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    wanted = [v for v in out if any(v.startswith(f"{p}.") for p in PYTHONS)]
    if wanted:
        os.environ["PYENV_VERSION"] = ":".join(wanted)


def _runs(version: str) -> bool:
    """Tell whether an interpreter for ``version`` (such as "3.12") starts here.

    Being on PATH is not enough: a pyenv shim exists for every installed version
    but fails for one that is not selected.
    """
    if found := shutil.which(f"python{version}"):
        command = [found, "-c", ""]
    elif shutil.which("py"):  # The Windows launcher, where nox looks too.
        command = ["py", f"-{version}", "-c", ""]
    else:
        return False
    try:
        done = subprocess.run(command, check=False, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _newest_present(pythons: list[str], runs: Callable[[str], bool] = _runs) -> str:
    """Return the newest of ``pythons`` that runs here, else the newest declared.

    Sessions that need one Python, not each, use it: a machine with any
    supported Python can lint, type-check, build the docs and run the demo. With
    none, nox reports the newest declared one as missing.
    """
    return next((v for v in reversed(pythons) if runs(v)), pythons[-1])


def _error_on_missing(environ: Mapping[str, str]) -> bool:
    """Tell whether a missing Python fails the run: only on CI (CI set, not 0/false).

    On CI a missing Python is a broken matrix: it fails, so all four are proven.
    Elsewhere nox skips the tests of the missing ones and names each in its
    summary ("tests-3.10: skipped (Python interpreter 3.10 not found)").
    """
    return environ.get("CI", "").lower() not in {"", "0", "false"}


_expose_pyenv_pythons()
# uv must use the machine's interpreters, never download its own.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")
nox.options.error_on_missing_interpreters = _error_on_missing(os.environ)
NEWEST = _newest_present(PYTHONS)


def _install(session: nox.Session, *groups: str, project: bool = True) -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    if project:
        session.install("-e", ".[fastapi,redis,otel]", *deps)
    else:
        session.install(*deps)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite with branch coverage, on asyncio and trio."""
    _install(session, "test")
    session.run("coverage", "erase")
    session.run("coverage", "run", "-m", "pytest", *session.posargs)
    session.run("coverage", "combine", "--quiet")
    session.run("coverage", "report")


@nox.session(python=PYTHONS[0])
def tests_lowest(session: nox.Session) -> None:
    """Run the tests with every runtime dependency at its declared lower bound.

    The lower bounds in pyproject.toml are a promise; this proves it. Test tools
    resolve as usual around those pins.
    """
    floors = [
        dep.replace(">=", "==").split(",")[0]
        for dep in PYPROJECT["project"]["dependencies"]
    ]
    constraints = session.create_tmp() + "/floors.txt"
    with open(constraints, "w", encoding="utf-8") as f:
        f.write("\n".join(floors) + "\n")
    # coredis needs a newer typing-extensions than the floor: the redis extra
    # is left out here, and its tests skip (tests/conftest_redis.py).
    deps = [
        d
        for d in nox.project.dependency_groups(PYPROJECT, "test")
        if not d.startswith("coredis")
    ]
    session.install("-c", constraints, "-e", ".[fastapi]", *deps)
    session.run("pytest", "-q", *session.posargs)


@nox.session(python=NEWEST)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    _install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=NEWEST)
def typecheck(session: nox.Session) -> None:
    """Type-check src and tests with mypy --strict, and the public API with pyright."""
    _install(session, "typecheck")
    session.run("mypy")
    session.run("pyright")


@nox.session(python=NEWEST)
def docs(session: nox.Session) -> None:
    """Build the documentation site; warnings are errors."""
    _install(session, "docs")
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        "site",
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=NEWEST)
def demo(session: nox.Session) -> None:
    """Run the example FastAPI app under uvicorn and drive it over HTTP."""
    _install(session, "demo")
    session.run("python", "examples/demo.py")


@nox.session(python=NEWEST)
def bench(session: nox.Session) -> None:
    """Benchmark bgtasks side by side with tenacity, stamina, backoff and aiojobs."""
    _install(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=NEWEST)
def bench_ab(session: nox.Session) -> None:
    """A/B the benchmarks against a git revision: nox -s bench_ab -- --base REV."""
    _install(session, "bench")
    session.run("python", "benchmarks/ab.py", *session.posargs)
