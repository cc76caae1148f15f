"""Development sessions: `nox` runs lint, typecheck, tests and docs."""

from __future__ import annotations

import os
import shutil
import subprocess

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["lint", "typecheck", "tests", "tests_lowest", "docs"]
# A missing interpreter is an error, not a silent skip: CI must prove all four.
nox.options.error_on_missing_interpreters = True

PYPROJECT = nox.project.load_toml("pyproject.toml")
PYTHONS = nox.project.python_versions(PYPROJECT)
LATEST = PYTHONS[-1]


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


_expose_pyenv_pythons()
# uv must use the machine's interpreters, never download its own.
os.environ.setdefault("UV_PYTHON_DOWNLOADS", "never")


def _install(session: nox.Session, *groups: str, project: bool = True) -> None:
    deps = [d for g in groups for d in nox.project.dependency_groups(PYPROJECT, g)]
    if project:
        session.install("-e", ".[fastapi,redis]", *deps)
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


@nox.session(python=LATEST)
def lint(session: nox.Session) -> None:
    """Check style and formatting with ruff."""
    _install(session, "lint", project=False)
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=LATEST)
def typecheck(session: nox.Session) -> None:
    """Type-check src and tests with mypy --strict, and the public API with pyright."""
    _install(session, "typecheck")
    session.run("mypy")
    session.run("pyright")


@nox.session(python=LATEST)
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


@nox.session(python=LATEST)
def demo(session: nox.Session) -> None:
    """Run the example FastAPI app under uvicorn and drive it over HTTP."""
    _install(session, "demo")
    session.run("python", "examples/demo.py")


@nox.session(python=LATEST)
def bench(session: nox.Session) -> None:
    """Benchmark bgtasks side by side with tenacity, stamina, backoff and aiojobs."""
    _install(session, "bench")
    session.run("python", "benchmarks/run.py", *session.posargs)
