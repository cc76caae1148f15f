"""Turn a call's arguments into an idempotency key and an argument fingerprint.

Everything here runs before anything is claimed, so a bad key never leaves a
claim behind. Template keys avoid ``Signature.bind`` on each call: the position
and default of each named argument are worked out once, at decoration time.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import string
from collections.abc import Callable
from typing import Any, cast

__all__ = ["KeyFunction", "make_fingerprint", "make_key"]

# Resolves a call's (args, kwargs) to a string.
KeyFunction = Callable[[tuple[Any, ...], dict[str, Any]], str]

_MISSING: Any = object()
_FIELD_END = re.compile(r"[.\[]")
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _signature(func: Callable[..., Any], what: str) -> inspect.Signature:
    try:
        return inspect.signature(func)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"@idempotent cannot read the signature of {func!r} to {what}: pass "
            "key= as a callable (and fingerprint= as a callable) instead."
        ) from exc


def _bind(
    signature: inspect.Signature,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    what: str,
) -> dict[str, Any]:
    """Bind a call to ``signature``, defaults applied; a bad call says ``what``.

    Raises:
        TypeError: the arguments do not fit (inspect's message names no value).
    """
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise TypeError(f"cannot {what}: {exc}") from exc
    bound.apply_defaults()
    return bound.arguments


def _template_fields(template: str) -> list[str]:
    """Return the argument names a ``str.format`` template refers to."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"@idempotent(key={template!r}) is not a valid str.format template: {exc}."
        ) from exc
    names: list[str] = []
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if conversion not in _CONVERSIONS:
            raise ValueError(
                f"@idempotent(key={template!r}) has an unknown conversion specifier "
                f"!{conversion}: use !r, !s or !a, or none."
            )
        name = _FIELD_END.split(field, maxsplit=1)[0]
        if not name.isidentifier():
            raise ValueError(
                f"@idempotent(key={template!r}) has a positional field "
                f"{{{field}}}: name the argument instead, as in '{{user_id}}'."
            )
        names.append(name)
        if spec:
            names.extend(_template_fields(spec))
    return names


def _template_key(
    func: Callable[..., Any], template: str, prefix: str, qualname: str
) -> KeyFunction:
    signature = _signature(func, "check the key template")
    params = signature.parameters
    names = list(dict.fromkeys(_template_fields(template)))
    for name in names:
        if name not in params:
            raise ValueError(
                f"@idempotent(key={template!r}) names {name!r}, which is not an "
                f"argument of {qualname}{signature}: use one of "
                f"{', '.join(params) or 'its (no) arguments'}."
            )

    def fail(exc: Exception) -> ValueError:
        return ValueError(
            f"could not format the idempotency key template {template!r} for "
            f"{qualname}(): it raised {type(exc).__name__} (the original is this "
            "error's __cause__)"
        )

    if any(params[n].kind in _VARIADIC for n in names):
        # *args/**kwargs fields need the full binding; rare enough to pay for it.
        building = f"build the idempotency key of {qualname}()"

        def slow_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            arguments = _bind(signature, args, kwargs, building)
            try:
                return prefix + template.format_map(arguments)
            except Exception as exc:
                raise fail(exc) from exc

        return slow_key

    positional = [
        p.name
        for p in params.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]

    def where(name: str) -> tuple[int, bool, Any]:
        # (position or -1, may come by keyword, default or _MISSING)
        param = params[name]
        return (
            positional.index(name) if name in positional else -1,
            param.kind is not inspect.Parameter.POSITIONAL_ONLY,
            _MISSING if param.default is inspect.Parameter.empty else param.default,
        )

    def missing(name: str) -> TypeError:
        return TypeError(
            f"{qualname}() missing argument {name!r}, which the idempotency key "
            f"template {template!r} needs"
        )

    parsed = list(string.Formatter().parse(template))
    if all(
        field is None or (field.isidentifier() and "{" not in (spec or ""))
        for _literal, field, spec, _conversion in parsed
    ):
        return _compiled_key(parsed, prefix, where, missing, fail)

    specs = [(name, *where(name)) for name in names]

    def mapped_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        values: dict[str, Any] = {}
        for name, index, by_keyword, default in specs:
            if 0 <= index < len(args):
                values[name] = args[index]
            elif by_keyword and name in kwargs:
                values[name] = kwargs[name]
            elif default is not _MISSING:
                values[name] = default
            else:
                raise missing(name)
        try:
            return prefix + template.format_map(values)
        except Exception as exc:
            raise fail(exc) from exc

    return mapped_key


_CONVERSIONS: dict[str | None, Callable[[object], str] | None] = {
    None: None,
    "s": str,
    "r": repr,
    "a": ascii,
}


def _compiled_key(
    parsed: list[tuple[str, str | None, str | None, str | None]],
    prefix: str,
    where: Callable[[str], tuple[int, bool, Any]],
    missing: Callable[[str], TypeError],
    fail: Callable[[Exception], ValueError],
) -> KeyFunction:
    """Build a key without ``str.format``'s parsing: the template has plain fields only.

    Each field is formatted exactly as ``str.format`` would: conversion, then
    ``format(value, spec)``; it saves the per-call parse on the hit path.
    """
    # The parser splits literal text at each escaped brace ("{{" ends an item
    # with "{"), so join the literals before each field, and those after the last.
    fields: list[tuple[str, str, str | None, str | None]] = []
    text = ""
    for literal, field, spec, conversion in parsed:
        text += literal
        if field is not None:
            fields.append((text, field, spec, conversion))
            text = ""
    literals = [before for before, *_ in fields] + [text]
    head = prefix + literals[0]
    parts: list[
        tuple[str, int, bool, Any, Callable[[object], str] | None, str, str]
    ] = []
    for i, (_before, field, spec, conversion) in enumerate(fields):
        parts.append(
            (
                field,
                *where(field),
                _CONVERSIONS[conversion],
                spec or "",
                literals[i + 1],
            )
        )

    if len(parts) == 1:
        return _one_field_key(head, parts[0], missing, fail)

    def compiled_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        key = head
        for name, index, by_keyword, default, convert, spec, following in parts:
            if 0 <= index < len(args):
                value = args[index]
            elif by_keyword and name in kwargs:
                value = kwargs[name]
            elif default is not _MISSING:
                value = default
            else:
                raise missing(name)
            try:
                if convert is not None:
                    value = convert(value)
                key += f"{value:{spec}}{following}"  # format(value, spec), no call
            except Exception as exc:
                raise fail(exc) from exc
        return key

    return compiled_key


def _one_field_key(
    head: str,
    part: tuple[str, int, bool, Any, Callable[[object], str] | None, str, str],
    missing: Callable[[str], TypeError],
    fail: Callable[[Exception], ValueError],
) -> KeyFunction:
    """Like ``compiled_key`` for the usual template of one field, without the loop."""
    name, index, by_keyword, default, convert, spec, following = part

    def one_field_key(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        if 0 <= index < len(args):
            value = args[index]
        elif by_keyword and name in kwargs:
            value = kwargs[name]
        elif default is not _MISSING:
            value = default
        else:
            raise missing(name)
        try:
            if convert is not None:
                value = convert(value)
            # An f-string field is format(value, spec), without the call to format.
            return f"{head}{value:{spec}}{following}"
        except Exception as exc:
            raise fail(exc) from exc

    return one_field_key


def _user_str_function(
    user: Callable[..., object], what: str, prefix: str = "", hint: str = ""
) -> KeyFunction:
    """Call the user's ``what`` (key or fingerprint function) and check its str."""

    def call(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        try:
            value = user(*args, **kwargs)
        except Exception as exc:
            # Only the type: the message may hold argument values (an email).
            raise ValueError(
                f"{what} raised {type(exc).__name__} (the original is this "
                "error's __cause__)"
            ) from exc
        if not isinstance(value, str):
            raise TypeError(
                f"{what} must return a str, got {type(value).__name__}{hint}."
            )
        return prefix + value

    return call


def make_key(
    func: Callable[..., Any],
    key: str | Callable[..., object],
    namespace: str,
    qualname: str,
) -> KeyFunction:
    """Build the resolver of ``"<namespace>:<key>"`` for calls of ``func``.

    Raises:
        ValueError: the template is malformed, positional, or names an unknown
            argument.
    """
    prefix = f"{namespace}:"
    if isinstance(key, str):
        return _template_key(func, key, prefix, qualname)
    return _user_str_function(
        key,
        f"the idempotency key function of {qualname}()",
        prefix,
        hint=": build the key with an f-string",
    )


# Exact types whose repr is canonical and tells the type apart: 1, 1.0, True,
# "1", b"1" and None all differ, and so do -0.0 and 0.0; nan equals itself.
_ATOMIC = frozenset({str, int, float, bool, type(None), bytes})
# Longer in-process fingerprints are digested, so a record stays small.
_INLINE_LIMIT = 128


def _atomic(values: tuple[object, ...]) -> bool:
    """Tell whether every value is of an ``_ATOMIC`` type or a tuple of them."""
    for value in values:
        kind = type(value)
        if kind not in _ATOMIC and not (
            kind is tuple and _atomic(cast("tuple[object, ...]", value))
        ):
            return False
    return True


def _digest(items: tuple[tuple[str, Any], ...], qualname: str) -> str:
    """BLAKE2b of the repr of ``(name, value)`` pairs: the persisted format."""
    try:
        text = repr(items)
    except Exception as exc:
        raise ValueError(
            f"cannot fingerprint the arguments of {qualname}(): an argument's "
            f"repr raised {type(exc).__name__} (the original is this error's "
            "__cause__)"
        ) from exc
    data = text.encode("utf-8", "backslashreplace")
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def make_fingerprint(
    func: Callable[..., Any],
    fingerprint: Callable[..., object] | None,
    qualname: str,
    *,
    in_process: bool = False,
) -> KeyFunction:
    """Build the resolver of a call's argument fingerprint.

    With no ``fingerprint`` callable, the fingerprint is a BLAKE2b digest of the
    ``repr`` of every bound argument, defaults applied, so positional and
    keyword calls agree; arguments must have value-based reprs. That digest is
    what a shared store keeps, so its format does not change between versions.

    ``in_process=True`` (a :class:`MemoryStore`: the fingerprint never leaves
    the process) skips the digest when every argument is a str, int, float,
    bool, None, bytes or a tuple of those: the fingerprint is then the
    parameter names and the repr of the values, which tells ``1``, ``1.0``,
    ``True`` and ``"1"`` apart. Other arguments, and long reprs, are digested.
    """
    if fingerprint is not None:
        return _user_str_function(
            fingerprint, f"the fingerprint function of {qualname}()"
        )

    signature = _signature(func, "fingerprint its arguments")
    params = list(signature.parameters.values())
    names = tuple(p.name for p in params)
    simple = not any(p.kind in _VARIADIC for p in params)
    positional = sum(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
    )
    # Every parameter positional: a call passing them all by position is bound.
    every_position = simple and positional == len(params)
    by_keyword = {p.name for p in params if p.kind is not p.POSITIONAL_ONLY}
    defaults = [p.default for p in params]
    binding = f"fingerprint the arguments of {qualname}()"

    def values_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
        # What Signature.bind + apply_defaults gives, in parameter order; the
        # full binding handles anything unusual, bad calls included.
        if every_position and not kwargs and len(args) == positional:
            return args
        if simple and len(args) <= positional:
            values = list(args)
            used = 0
            for name, default in zip(
                names[len(args) :], defaults[len(args) :], strict=True
            ):
                if name in kwargs and name in by_keyword:
                    values.append(kwargs[name])
                    used += 1
                elif default is not inspect.Parameter.empty:
                    values.append(default)
                else:
                    break
            else:
                if used == len(kwargs):
                    return tuple(values)
        return tuple(_bind(signature, args, kwargs, binding).values())

    if not in_process:

        def repr_fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
            values = values_of(args, kwargs)
            return _digest(tuple(zip(names, values, strict=True)), qualname)

        return repr_fingerprint

    # Names first, "=" then the values' repr (a tuple's, so "(..."): never a
    # hex digest, and a function renaming a parameter sees different calls.
    head = ",".join(names) + "="

    def local_fingerprint(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        values = values_of(args, kwargs)
        if _atomic(values):
            text = head + repr(values)
            if len(text) <= _INLINE_LIMIT:
                return text
        return _digest(tuple(zip(names, values, strict=True)), qualname)

    return local_fingerprint
