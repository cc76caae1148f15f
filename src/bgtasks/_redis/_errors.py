"""The errors of the Redis layer.

They belong in :mod:`bgtasks.exceptions` and move there when the async store
protocol lands; until then they live here so this package merges on its own.
"""

from __future__ import annotations

from ..exceptions import BgTasksError

__all__ = ["BackendUnavailableError", "RecordSerializationError", "RecordedError"]


class BackendUnavailableError(BgTasksError, ConnectionError):
    """The shared backend (Redis) did not answer in time, or refused the call.

    Raised instead of guessing: an ``@idempotent`` call that cannot reach its
    store fails closed rather than risk running its body twice. The cause
    (``__cause__``) is the client's own error, for the logs.
    """


class RecordSerializationError(BgTasksError, TypeError):
    """A result could not be turned into bytes for the store, or read back.

    Raised when the call completes: the claim is released first, so the next
    call runs again and nothing is left stuck. Return JSON-able values (dicts,
    lists, strings, numbers, booleans, ``None``) or pass ``serializer=``.
    """


class RecordedError(BgTasksError):
    """A recorded error read back from a shared store, not yet resolved to its type.

    A store never imports a class by name (whoever can write to Redis must not
    choose what the app instantiates). It returns this neutral descriptor;
    :meth:`resolve` rebuilds the original type from the types the caller lists
    (``@idempotent(record_errors=...)``), and when it cannot, this error itself
    is raised, carrying the type's name and the message.

    Attributes:
        type_name: the qualified name of the original type, ``"module.Qualname"``.
        message: ``str()`` of the original error.
        error_args: the original ``args`` when they were JSON-able, else ``None``.
    """

    def __init__(
        self, type_name: str, message: str, error_args: tuple[object, ...] | None
    ) -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.message = message
        self.error_args = error_args

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.message, self.error_args))

    def resolve(self, types: tuple[type[Exception], ...]) -> Exception:
        """Rebuild the original error if its type is one of ``types`` or below.

        Subclasses of a listed type count (what ``isinstance`` recorded); the
        type is found among the listed classes and their subclasses only.
        Returns ``self`` when no such type is known or its constructor does not
        accept the recorded ``args``.
        """
        if self.error_args is None:
            return self
        found = _find_type(self.type_name, types)
        if found is None:
            return self
        try:
            return found(*self.error_args)
        except Exception:  # a constructor that wants more than its args
            return self


def qualified_name(cls: type[BaseException]) -> str:
    """Return ``"module.Qualname"``, the name a recorded error is stored under."""
    return f"{cls.__module__}.{cls.__qualname__}"


def _find_type(name: str, types: tuple[type[Exception], ...]) -> type[Exception] | None:
    seen: set[type[Exception]] = set()
    stack = list(types)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if qualified_name(cls) == name:
            return cls
        stack.extend(cls.__subclasses__())
    return None
