"""A clock that moves only when told to, for testing expiry without waiting."""

from __future__ import annotations

import math
import threading

__all__ = ["ManualClock"]


class ManualClock:
    """A callable clock whose time changes only through :meth:`advance`.

    Pass it wherever bgtasks takes a ``clock``, such as
    ``MemoryStore(clock=ManualClock())``, to make records expire on demand.
    Thread-safe.

    Args:
        start: the initial time, in seconds.

    Examples:
        >>> clock = ManualClock()
        >>> clock.advance(90)
        >>> clock()
        90.0
    """

    __slots__ = ("_lock", "_now")

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        """Return the current time, in seconds."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the time forward by ``seconds``.

        Raises:
            ValueError: ``seconds`` is negative or not finite; clocks only go
                forward.
        """
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(
                f"ManualClock.advance(seconds={seconds!r}) needs a finite number "
                ">= 0: a clock only moves forward."
            )
        with self._lock:
            self._now += seconds
