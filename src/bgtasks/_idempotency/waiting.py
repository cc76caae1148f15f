"""Wake callers waiting on a key another call is running, across tasks and threads.

A duplicate may wait on the event loop while the first call runs in a worker
thread, or the other way round, and ``anyio.Event`` is not thread-safe. So a
*flight* (the waiters of one in-progress key) holds a ``threading.Event`` for
waiting threads and, per event loop with waiters, one ``anyio.Event`` shared by
all of that loop's tasks plus a thread-safe way to set it on its loop. Landing
a flight sets each: directly on the loop's own thread, otherwise through the
loop's non-blocking thread-safe entry point. A thousand waiting tasks cost one
event, no thread.

Waiters join *before* they look at the store, so a completion between the look
and the wait cannot be missed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel

__all__ = ["Flight", "FlightBoard", "LoopWaiters", "board"]


def _loop_scheduler() -> Callable[[Callable[[], object]], object]:
    """Return a non-blocking, thread-safe "call this soon on the current loop"."""
    token = anyio.lowlevel.current_token()
    # anyio >= 4.11 wraps the native token; older releases return it bare.
    native: Any = getattr(token, "native_token", token)
    # asyncio loops and trio tokens each have one public, thread-safe entry point.
    schedule: Callable[[Callable[[], object]], object] = (
        getattr(native, "call_soon_threadsafe", None) or native.run_sync_soon
    )
    return schedule


class LoopWaiters:
    """The tasks of one event loop waiting on one flight."""

    __slots__ = ("count", "event", "schedule", "thread")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.schedule = _loop_scheduler()
        self.thread = threading.get_ident()
        self.count = 0

    def wake(self) -> None:
        """Set the event, from whatever thread lands the flight."""
        try:
            if self.thread == threading.get_ident():
                self.event.set()
            else:
                self.schedule(self.event.set)
        except RuntimeError:
            pass  # That loop has finished: nobody there is waiting any more.


class Flight:
    """The waiters of one in-progress key."""

    __slots__ = ("landed", "loops", "thread_event", "waiters")

    def __init__(self) -> None:
        self.waiters = 0
        self.landed = False
        self.thread_event: threading.Event | None = None
        self.loops: dict[int, LoopWaiters] = {}


class FlightBoard:
    """The flights of every store and key that callers are waiting on."""

    __slots__ = ("_flights", "_lock")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[tuple[int, str], Flight] = {}

    def _join(self, slot: tuple[int, str]) -> Flight:
        # Caller holds the lock.
        flight = self._flights.get(slot)
        if flight is None:
            flight = self._flights[slot] = Flight()
        flight.waiters += 1
        return flight

    def join_thread(self, store: object, key: str) -> tuple[Flight, threading.Event]:
        """Register a waiting thread; returns its flight and event."""
        with self._lock:
            flight = self._join((id(store), key))
            if flight.thread_event is None:
                flight.thread_event = threading.Event()
            return flight, flight.thread_event

    def join_loop(self, store: object, key: str) -> tuple[Flight, LoopWaiters]:
        """Register a waiting task; call it on the task's event loop."""
        thread = threading.get_ident()
        with self._lock:
            flight = self._join((id(store), key))
            waiters = flight.loops.get(thread)
            if waiters is None:
                waiters = flight.loops[thread] = LoopWaiters()
            waiters.count += 1
            return flight, waiters

    def leave(
        self,
        store: object,
        key: str,
        flight: Flight,
        loop_waiters: LoopWaiters | None = None,
    ) -> None:
        """Unregister a waiter, whether it was woken, timed out or cancelled."""
        slot = (id(store), key)
        with self._lock:
            flight.waiters -= 1
            if flight.landed:
                return
            if loop_waiters is not None:
                loop_waiters.count -= 1
                if loop_waiters.count == 0:
                    del flight.loops[loop_waiters.thread]
            if flight.waiters == 0:
                del self._flights[slot]

    def waiting(self, store: object, key: str) -> int:
        """Count the callers waiting on ``key`` of ``store`` right now."""
        with self._lock:
            flight = self._flights.get((id(store), key))
            return 0 if flight is None else flight.waiters

    def land(self, store: object, key: str) -> None:
        """Wake everyone waiting on ``key``: its claim was completed or released."""
        if not self._flights:
            # Nobody waits anywhere. A waiter joining now looks at the store after
            # joining, so it sees the change this landing announces.
            return
        with self._lock:
            flight = self._flights.pop((id(store), key), None)
            if flight is None:
                return
            flight.landed = True
            loops = list(flight.loops.values())
        if flight.thread_event is not None:
            flight.thread_event.set()
        for waiters in loops:
            waiters.wake()


#: The process-wide board every ``@idempotent`` function shares.
board = FlightBoard()
