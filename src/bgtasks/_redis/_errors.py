"""How the Redis layer names error types; its errors live in bgtasks.exceptions.

``BackendUnavailableError``, ``RecordSerializationError`` and ``RecordedError``
are re-exported here for the modules of this package that import them from
their first home (the connector and the task mirror).
"""

from __future__ import annotations

from ..exceptions import (
    BackendUnavailableError,
    RecordedError,
    RecordSerializationError,
)

__all__ = [
    "BackendUnavailableError",
    "RecordSerializationError",
    "RecordedError",
    "qualified_name",
]


def qualified_name(cls: type[BaseException]) -> str:
    """Return ``"module.Qualname"``, the name a recorded error is stored under.

    ``RecordedError.resolve`` matches types by this same name.
    """
    return f"{cls.__module__}.{cls.__qualname__}"
