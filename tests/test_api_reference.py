"""The API reference shows only public names in its signatures."""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXTENSION = ROOT / "docs" / "griffe_public_signatures.py"
MODULES = [
    "bgtasks",
    "bgtasks.backoff",
    "bgtasks.exceptions",
    "bgtasks.fastapi",
    "bgtasks.otel",
    "bgtasks.starlette",
    "bgtasks.testing",
]
PRIVATE = re.compile(r"(?<![\w.])_[A-Za-z]\w*")


@pytest.fixture(scope="module")
def package() -> Any:
    """bgtasks as mkdocstrings loads it for the docs, extension included."""
    extensions = griffe.load_extensions(f"{EXTENSION}:PublicSignatures")
    return griffe.load(
        "bgtasks", search_paths=[str(ROOT / "src")], extensions=extensions
    )


def _signatures(package: Any) -> Iterator[tuple[str, Any]]:
    """Each rendered signature: overloads in place of their implementation."""
    for module_name in MODULES:
        for name in importlib.import_module(module_name).__all__:
            obj = package[f"{module_name}.{name}".removeprefix("bgtasks.")]
            obj = obj.final_target if obj.is_alias else obj
            functions = [obj] if obj.is_function else []
            if obj.is_class:
                functions = [
                    member.final_target if member.is_alias else member
                    for member_name, member in obj.all_members.items()
                    if member.is_function
                    and (not member_name.startswith("_") or member_name == "__init__")
                ]
            for function in functions:
                for shown in function.overloads or [function]:
                    yield f"{module_name}.{name}: {function.name}", shown


def test_no_private_positional_only_guard(package: Any) -> None:
    """A guard such as retry's ``_func`` is not in any signature."""
    shown = [
        f"{where}({parameter.name})"
        for where, function in _signatures(package)
        for parameter in function.parameters
        if parameter.kind is griffe.ParameterKind.positional_only
        and PRIVATE.fullmatch(parameter.name)
    ]
    assert shown == []


def test_no_private_default(package: Any) -> None:
    """Defaults read as values (``exponential()``), not private constants."""
    shown = [
        f"{where}({parameter.name}={parameter.default})"
        for where, function in _signatures(package)
        for parameter in function.parameters
        if parameter.default is not None and PRIVATE.search(str(parameter.default))
    ]
    assert shown == []


def test_the_checks_see_functions_and_methods(package: Any) -> None:
    """Module functions and class methods are all checked."""
    where = {where for where, _ in _signatures(package)}
    assert {
        "bgtasks.retry: retry",
        "bgtasks.idempotent: idempotent",
        "bgtasks.TaskManager: spawn",
        "bgtasks.backoff.exponential: exponential",
        "bgtasks.testing.fresh_idempotency_store: fresh_idempotency_store",
    } <= where
