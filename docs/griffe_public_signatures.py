"""A griffe extension that keeps private names out of the rendered signatures.

mkdocstrings renders a signature as written in the source, so two kinds of
private name would reach the API reference:

- a positional-only parameter with a leading underscore, such as ``_func`` in
  ``retry(_func=None, /, *, ...)``: a guard that rejects a bare ``@retry``,
  never meant to be passed; it is dropped;
- a default that is a private module constant, such as
  ``backoff=_DEFAULT_BACKOFF``: it is replaced by the constant's own value as
  written in the source (``backoff=exponential()``).

Anything else stays as written. Listed under the python handler's
``extensions`` in mkdocs.yml.
"""

from __future__ import annotations

from typing import Any

import griffe

__all__ = ["PublicSignatures"]


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


class PublicSignatures(griffe.Extension):
    """Drop private positional-only guards and spell out private defaults."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Rewrite every function of the package once it is loaded."""
        self._visit(pkg)

    def _visit(self, obj: griffe.Object) -> None:
        for member in obj.members.values():
            if member.is_alias:
                continue  # rewritten where it is defined
            if isinstance(member, griffe.Function):
                for function in [member, *(member.overloads or [])]:
                    self._rewrite(function)
            elif isinstance(member, griffe.Module | griffe.Class):
                self._visit(member)

    def _rewrite(self, function: griffe.Function) -> None:
        for parameter in list(function.parameters):
            if parameter.kind is griffe.ParameterKind.positional_only and _is_private(
                parameter.name
            ):
                del function.parameters[parameter.name]
            elif isinstance(parameter.default, griffe.ExprName) and _is_private(
                parameter.default.name
            ):
                parameter.default = self._value_of(function, parameter.default)

    def _value_of(
        self, function: griffe.Function, name: griffe.ExprName
    ) -> str | griffe.Expr:
        try:
            constant = function.module[name.name]
            if constant.is_alias:
                constant = constant.final_target
        except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            return name
        value = getattr(constant, "value", None)
        return name if value is None else value
