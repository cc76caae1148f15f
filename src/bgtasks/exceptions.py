"""Exceptions raised by bgtasks; all subclass :class:`BgTasksError`.

Where a bgtasks error is also a standard kind of error (a lookup, a bad runtime
state), it subclasses that builtin too, so ``except LookupError`` keeps working.
Bad arguments at decoration or construction time raise the builtin
``TypeError`` / ``ValueError`` with a message naming the argument and the fix.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BgTasksError",
    "DuplicateTaskError",
    "IdempotencyConflictError",
    "ManagerNotRunningError",
    "NoCurrentTaskError",
    "NoEventLoopError",
    "RecordSerializationError",
    "RecordedError",
    "TaskAlreadyExistsError",
    "TaskNotFoundError",
]


class BgTasksError(Exception):
    """Base class of every exception bgtasks raises on purpose."""


class TaskAlreadyExistsError(BgTasksError):
    """A task id given with ``_task_id=`` belongs to a task that is still active."""


class TaskNotFoundError(BgTasksError, LookupError):
    """No task with this id is known to the manager (never existed, or dropped)."""


class ManagerNotRunningError(BgTasksError, RuntimeError):
    """The TaskManager was used before ``async with manager`` or after it closed."""


class NoCurrentTaskError(BgTasksError, RuntimeError):
    """``current_task()`` was called outside a task run by a TaskManager."""


class DuplicateTaskError(BgTasksError):
    """An idempotent call found its key already claimed by a running call.

    Raised with ``on_duplicate="raise"``, or when a bounded wait for the first
    call runs out.
    """


class IdempotencyConflictError(BgTasksError):
    """An idempotency key was reused with different arguments.

    Raised when argument fingerprinting is on, instead of silently returning the
    result of a call made with other arguments.
    """


class NoEventLoopError(BgTasksError, RuntimeError):
    """A sync ``@idempotent`` function with an async-only store had no loop to reach.

    An async store (such as ``RedisStore``) is reached from a sync function
    through the event loop that runs it in a worker thread. Make the function
    ``async def``, run it in a worker thread of a running loop (Starlette's
    ``BackgroundTasks`` and ``anyio.to_thread.run_sync`` do), or use
    ``MemoryStore``.
    """


class BackendUnavailableError(BgTasksError, ConnectionError):
    """The shared backend (Redis) did not answer in time, or refused the call.

    Raised instead of guessing: an ``@idempotent`` call that cannot reach its
    store fails closed rather than risk running its body twice (unless it was
    decorated with ``on_store_error="run"``). The cause (``__cause__``) is the
    client's own error, for the logs.
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


def _find_type(name: str, types: tuple[type[Exception], ...]) -> type[Exception] | None:
    seen: set[type[Exception]] = set()
    stack = list(types)
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.add(cls)
        # The name the Redis codec records an error under (its qualified_name).
        if f"{cls.__module__}.{cls.__qualname__}" == name:
            return cls
        stack.extend(cls.__subclasses__())
    return None
