"""The deadline a task runs under, and the two functions that read it.

``timeout`` publishes a :class:`Deadline` in a context variable; ``checkpoint()``
and ``remaining()`` read it from anywhere below: async code on the event loop,
sync code in the same thread, and sync code in anyio worker threads (anyio
copies the context into them, Starlette's thread pool included).

An async deadline lives on the event loop's clock (``anyio.current_time()``),
which may be offset (trio) or virtual (trio's ``MockClock``) and can only be
read on the loop's own thread. Each deadline therefore also carries its
``time.monotonic()`` equivalent, which any thread can compare against.
"""

from __future__ import annotations

import contextlib
import threading
import time
from contextvars import ContextVar
from threading import get_ident

import anyio
import anyio.from_thread

from . import _observe

__all__ = [
    "Deadline",
    "checkpoint",
    "deadline_var",
    "in_worker_thread",
    "may_stop",
    "remaining",
    "seconds_left",
    "stop_if_due",
]

try:  # anyio marks the threads it runs work in through this thread-local
    from anyio._core import _eventloop as _anyio_eventloop

    _anyio_threadlocals: threading.local | None = _anyio_eventloop.threadlocals
except (ImportError, AttributeError):  # pragma: no cover - anyio moved it
    _anyio_threadlocals = None


class Deadline:
    """When the innermost ``timeout`` expires, on the clocks that can read it.

    Attributes:
        monotonic: the deadline on ``time.monotonic()``, valid in every thread.
        loop: the deadline on the event loop's clock, or ``None`` for a deadline
            set by a sync function.
        loop_thread: the ident of the thread whose event loop ``loop`` belongs
            to (0 when ``loop`` is ``None``).
        seconds: the ``timeout`` that set this deadline, for messages.
        name: the qualified name of the function that ``timeout`` wraps.
    """

    __slots__ = ("loop", "loop_thread", "monotonic", "name", "seconds")

    def __init__(
        self,
        monotonic: float,
        loop: float | None,
        loop_thread: int,
        seconds: float,
        name: str,
    ) -> None:
        self.monotonic = monotonic
        self.loop = loop
        self.loop_thread = loop_thread
        self.seconds = seconds
        self.name = name


# The innermost (earliest) deadline of the code running in this context.
deadline_var: ContextVar[Deadline | None] = ContextVar("bgtasks.deadline", default=None)


def seconds_left(deadline: Deadline) -> float:
    """Return the seconds until ``deadline``, negative once it has passed."""
    if deadline.loop is not None and deadline.loop_thread == get_ident():
        try:
            return deadline.loop - anyio.current_time()
        except RuntimeError:  # that event loop has ended; the monotonic copy holds
            pass
    return deadline.monotonic - time.monotonic()


def remaining() -> float | None:
    """Return the seconds left before the current ``timeout`` expires.

    Pass it as the timeout of a blocking call, so the I/O gives up no later than
    the task's deadline. ``None`` means that no ``timeout`` is in effect: it is
    what socket, ``requests``, ``httpx``, ``subprocess`` and anyio take as "no
    timeout", so ``remaining()`` can be passed straight through. Once the
    deadline has passed it returns ``0.0``, never a negative number.

    Works in async functions, in sync functions (in the caller's thread or an
    anyio worker thread), and in any function they call. Under nested
    timeouts it reports the earliest deadline.

    Examples:
        >>> from bgtasks import remaining
        >>> remaining() is None  # outside any @timeout
        True
    """
    deadline = deadline_var.get()
    if deadline is None:
        return None
    return max(0.0, seconds_left(deadline))


def checkpoint() -> None:
    """Raise if the task should stop: call it between steps of a sync task.

    A thread cannot be interrupted from outside, so a sync task stops where it
    calls ``checkpoint()``:

    - once the current ``timeout`` deadline has passed, it raises the builtin
      ``TimeoutError``;
    - in an anyio worker thread (Starlette's thread pool, a ``TaskManager``
      sync task), if the task that started the thread has been cancelled, it
      raises that event loop's cancellation exception, which must propagate.

    It does nothing otherwise, and is cheap enough for a tight loop. In async
    code it only checks the deadline: an async task is cancelled at its next
    ``await`` anyway.

    Raises:
        TimeoutError: the deadline of the innermost ``timeout`` has passed.
    """
    stop_if_due("bgtasks.checkpoint()")


def stop_if_due(seen_at: str) -> None:
    """Do what ``checkpoint()`` does, naming ``seen_at`` in the TimeoutError."""
    deadline = deadline_var.get()
    if deadline is not None:
        late = -seconds_left(deadline)
        if late >= 0:
            if _observe.hook is not None:
                _observe.hook.timed_out(deadline.name, deadline.seconds)
            raise TimeoutError(
                f"{deadline.name} passed the deadline of its {deadline.seconds:g} s "
                f"timeout {late:.3f} s ago (seen at {seen_at})"
            )
    if _anyio_threadlocals is None:  # pragma: no cover - see the import above
        # Outside an anyio worker thread there is no host task to ask.
        with contextlib.suppress(RuntimeError):
            anyio.from_thread.check_cancelled()
    elif "current_token" in _anyio_threadlocals.__dict__:  # in_worker_thread()
        anyio.from_thread.check_cancelled()


def may_stop() -> bool:
    """Tell whether :func:`stop_if_due` can raise here: a deadline, or a host task.

    Neither changes while a call runs, so a loop asks once and skips its checks.
    """
    return (
        deadline_var.get() is not None
        or _anyio_threadlocals is None  # see stop_if_due: it asks anyio then
        or in_worker_thread()
    )


def in_worker_thread() -> bool:
    """Tell whether this thread is an anyio worker thread with a host task."""
    if _anyio_threadlocals is None:  # pragma: no cover - see the import above
        return False
    # Only anyio worker threads carry this (anyio 4.4 to 4.16 at least; a test
    # cancels a worker to catch a rename). Reading the dict raises nothing.
    return "current_token" in _anyio_threadlocals.__dict__
