"""How records become bytes in Redis and back: values serialized, errors as data.

Never pickle: whoever can write to Redis must not get code execution in the
app. Values go through ``serializer`` (JSON unless told otherwise); a recorded
error is stored as its qualified type name, its message and its ``args`` when
they are JSON-able, and comes back as a :class:`RecordedError` descriptor.
"""

from __future__ import annotations

import contextlib
import json
from typing import Protocol, cast, runtime_checkable

from ..exceptions import RecordedError, RecordSerializationError
from ._errors import qualified_name

__all__ = [
    "JSONSerializer",
    "Serializer",
    "check_serializer",
    "decode_error",
    "decode_value",
    "encode_error",
    "encode_value",
]


@runtime_checkable
class Serializer(Protocol):
    """Turns a recorded value into bytes (or text) and back."""

    def dumps(self, obj: object, /) -> bytes | str:
        """Return ``obj`` as bytes or text; raise TypeError or ValueError if not."""
        ...

    def loads(self, data: bytes, /) -> object:
        """Return the value that :meth:`dumps` turned into ``data``."""
        ...


class JSONSerializer:
    """The default: compact UTF-8 JSON, with NaN and infinities refused.

    A JSON round trip changes some types: tuples come back as lists, dict keys
    as strings. Pass your own serializer (for instance one built on pydantic or
    msgspec) to keep richer types.
    """

    __slots__ = ()

    def dumps(self, obj: object, /) -> bytes:
        """Return ``obj`` as JSON bytes."""
        return json.dumps(
            obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()

    def loads(self, data: bytes, /) -> object:
        """Return the value of JSON ``data``."""
        return json.loads(data)


def check_serializer(serializer: object) -> Serializer:
    """Return ``serializer`` if it has ``dumps`` and ``loads``, else raise TypeError."""
    if not isinstance(serializer, Serializer):
        raise TypeError(
            f"RedisStore(serializer=...) needs an object with dumps(obj) -> bytes "
            f"and loads(data) -> obj, got {type(serializer).__name__}: pass e.g. "
            "bgtasks.redis.JSONSerializer()."
        )
    return serializer


def encode_value(serializer: Serializer, value: object) -> bytes:
    """Serialize a recorded value; a failure is a :class:`RecordSerializationError`."""
    try:
        data = serializer.dumps(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise RecordSerializationError(
            f"the result (a {type(value).__name__}) cannot be stored by "
            f"{type(serializer).__name__}: {type(exc).__name__}: {exc}. Return "
            "JSON-able values (dict, list, str, int, float, bool, None), or pass "
            "RedisStore(serializer=...)."
        ) from exc
    return data.encode() if isinstance(data, str) else bytes(data)


def decode_value(serializer: Serializer, data: bytes) -> object:
    """Deserialize a stored value; a failure is a :class:`RecordSerializationError`."""
    try:
        return serializer.loads(data)
    except Exception as exc:  # any decoder's failure: bad or foreign data
        raise RecordSerializationError(
            f"a stored result cannot be read by {type(serializer).__name__}: "
            f"{type(exc).__name__}; was it written with another serializer?"
        ) from exc


def encode_error(exc: BaseException) -> bytes:
    """Describe ``exc`` as JSON: its qualified type, message and JSON-able args."""
    if isinstance(exc, RecordedError):  # a replayed descriptor: keep the original's
        name, message, args = exc.type_name, exc.message, exc.error_args
    else:
        name, message, args = qualified_name(type(exc)), str(exc), exc.args
    described: dict[str, object] = {"type": name, "message": message}
    if args is not None:
        # Args that are not JSON-able are left out: it replays as a RecordedError.
        with contextlib.suppress(TypeError, ValueError, OverflowError):
            described["args"] = json.loads(json.dumps(list(args), allow_nan=False))
    return json.dumps(described, separators=(",", ":"), ensure_ascii=False).encode()


def decode_error(data: bytes) -> RecordedError:
    """Read back what :func:`encode_error` stored, as a :class:`RecordedError`."""
    try:
        described = json.loads(data)
        name = str(described["type"])
        message = str(described.get("message", ""))
        args = described.get("args")
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise RecordSerializationError(
            "a stored error record is not one bgtasks wrote; forget the key."
        ) from exc
    listed = cast("list[object]", args) if isinstance(args, list) else None
    return RecordedError(name, message, None if listed is None else tuple(listed))
