"""Where ``@idempotent`` keeps claims and results: the store protocol, MemoryStore.

The records are named tuples: immutable, and several times cheaper to build
than frozen dataclasses on the path that runs a call. The public protocol is
async: a shared store (Redis, a database) answers over the network. A store
whose operations never block (MemoryStore: sub-microsecond critical sections)
also offers them synchronously as :class:`LocalStore`; the decorator then calls
those directly, with no ``await`` and no event loop needed, and waits for a
running duplicate on the in-process flight board.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import anyio

from .._validate import check_int
from .waiting import board

__all__ = [
    "CLAIMED",
    "ClaimResult",
    "ClaimStatus",
    "IdempotencyRecord",
    "IdempotencyStore",
    "LocalStore",
    "MemoryStore",
]

ClaimStatus = Literal["claimed", "completed", "in_progress"]

# False on a free-threaded build running without the GIL (3.13+): get_now locks.
_GIL: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class IdempotencyRecord(NamedTuple):
    """The recorded outcome of a completed call (an immutable named tuple).

    Attributes:
        value: what the call returned, kept as the same Python object.
        error: the exception the call raised, when its type was listed in
            ``record_errors``; later calls re-raise it instead of running.
        fingerprint: the argument fingerprint of the call, or ``None``.
    """

    value: object = None
    error: Exception | None = None
    fingerprint: str | None = None


class ClaimResult(NamedTuple):
    """What :meth:`IdempotencyStore.claim` found for a key (a named tuple).

    Attributes:
        status: ``"claimed"``: the key is now the caller's to run;
            ``"completed"``: ``record`` holds the outcome to return;
            ``"in_progress"``: another owner holds an unexpired claim.
        record: the completed outcome, for ``"completed"``.
        fingerprint: the fingerprint of the existing claim or record.
        retry_after: for ``"in_progress"``, seconds after which the caller
            should ask again at the latest (when the other owner's lease ends).
        fence: for ``"claimed"``, the claim's fencing token: it grows with
            every claim of the key, and ``complete``/``release`` must name it,
            so an owner whose lease lapsed cannot overwrite its successor.
    """

    status: ClaimStatus
    record: IdempotencyRecord | None = None
    fingerprint: str | None = None
    retry_after: float = 0.0
    fence: int = 0


#: A ``"claimed"`` result with fence 0, for stores that do not fence.
CLAIMED = ClaimResult("claimed")


@runtime_checkable
class IdempotencyStore(Protocol):
    """What ``@idempotent`` needs from a store; each method must be atomic.

    Keys arrive namespaced (``"<namespace>:<key>"``). An owner is an opaque,
    unique token per call: only the owner of a claim, with the claim's fence,
    may complete or release it. A claim whose ``lease`` has run out may be
    taken by another owner, so a crashed worker cannot block its key forever.
    A shared store (Redis, a database) implements each method as one atomic
    operation, and raises :class:`~bgtasks.exceptions.BackendUnavailableError`
    when it cannot answer.
    """

    async def claim(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Claim ``key`` for ``owner`` for ``lease`` seconds, unless it is taken.

        Returns ``"completed"`` with the record if the key has an unexpired
        record, ``"in_progress"`` if another owner's lease is still running,
        otherwise records the claim and returns ``"claimed"`` with its fence.
        """
        ...

    async def complete(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Replace ``owner``'s claim (``fence``) with ``record``, kept ``ttl`` seconds.

        Returns ``False`` (and stores nothing) if ``owner`` no longer holds the
        claim, for instance after its lease ran out and another owner took it.
        """
        ...

    async def release(self, key: str, *, owner: str, fence: int) -> bool:
        """Drop ``owner``'s claim so that the next call runs; ``False`` if not held."""
        ...

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Return the unexpired record of ``key``, or ``None``."""
        ...

    async def forget(self, key: str) -> None:
        """Drop whatever the store holds for ``key``, record or claim."""
        ...

    async def wait(self, key: str, *, timeout: float) -> None:  # noqa: ASYNC109 - the protocol's bound
        """Return once ``key``'s claim may have been completed or released.

        Returns after ``timeout`` seconds at the latest, or at once when the
        key holds no running claim; the caller then claims again. Waking early
        is allowed, missing a landing for longer than ``timeout`` is not.
        """
        ...


@runtime_checkable
class LocalStore(Protocol):
    """A store of this process whose operations never block: called without ``await``.

    ``@idempotent`` uses these instead of the async protocol when a store
    offers them: no event loop is needed, and a replay costs a dictionary
    lookup. Waiting for a running duplicate goes through the flight board,
    woken by the decorator itself when it completes or releases.
    """

    def claim_now(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Like :meth:`IdempotencyStore.claim`, synchronously."""
        ...

    def complete_now(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Like :meth:`IdempotencyStore.complete`, synchronously."""
        ...

    def release_now(self, key: str, *, owner: str, fence: int) -> bool:
        """Like :meth:`IdempotencyStore.release`, synchronously."""
        ...

    def get_now(self, key: str) -> IdempotencyRecord | None:
        """Like :meth:`IdempotencyStore.get`, synchronously."""
        ...


class Recorded(Protocol):
    """What a hit reads of a completed call: a record, or a MemoryStore entry."""

    @property
    def value(self) -> object: ...

    @property
    def error(self) -> Exception | None: ...

    @property
    def fingerprint(self) -> str | None: ...


class _Claim:
    """An in-progress claim: who holds it, with which fence, and until when."""

    __slots__ = ("fence", "fingerprint", "lease_until", "owner")

    def __init__(
        self, owner: str, fence: int, fingerprint: str | None, lease_until: float
    ) -> None:
        self.owner = owner
        self.fence = fence
        self.fingerprint = fingerprint
        self.lease_until = lease_until


class _Done:
    """A completed entry; the claim result is built once and returned on each hit.

    The record's fields are copied into slots: ``@idempotent``'s hit path reads
    them from here (see ``MemoryStore._entry_now``), and a slot costs about
    a third of a named tuple's field access.
    """

    __slots__ = ("error", "expires_at", "fingerprint", "result", "value")

    def __init__(self, result: ClaimResult, expires_at: float) -> None:
        record = result.record
        assert record is not None  # complete_now builds it with one
        self.result = result
        self.value = record.value
        self.error = record.error
        self.fingerprint = record.fingerprint
        self.expires_at = expires_at


class MemoryStore:
    """A thread-safe, task-safe, bounded in-process :class:`IdempotencyStore`.

    One ``threading.Lock`` guards every change and is never held across an
    ``await``, so the store is safe between the event loop and worker threads;
    a hit (``get_now``) takes no lock where the GIL makes its reads atomic.
    Each async method has a synchronous twin (``claim_now``, ``complete_now``,
    ``release_now``, ``get_now``) that ``@idempotent`` calls directly, so sync
    functions need no event loop. Fences come from one counter per store:
    every claim of a key gets a larger one than the claim before it.
    Completed records expire ``ttl`` seconds after completion, measured by
    ``clock``. At most ``max_entries`` keys are kept: past that, the least
    recently used *completed* records are evicted; in-progress claims never
    are (they may briefly push the count over the bound). Expired records are
    dropped when touched or evicted.

    Args:
        max_entries: the most keys to keep (records plus claims), at least 1.
        clock: returns the current time in seconds; inject a fake clock (such
            as ``ManualClock``) to test expiry without waiting.

    Raises:
        TypeError: ``max_entries`` is not an int or ``clock`` not callable.
        ValueError: ``max_entries`` is below 1.

    Examples:
        >>> store = MemoryStore(max_entries=1000)
        >>> store.get_now("app.send:welcome:a@example.com") is None
        True
    """

    __slots__ = ("_claims", "_clock", "_done", "_fences", "_lock", "_max_entries")

    def __init__(
        self, *, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        check_int("MemoryStore(max_entries=...)", max_entries, minimum=1)
        if not callable(clock):
            raise TypeError(
                f"MemoryStore(clock=...) must be callable returning seconds, got "
                f"{type(clock).__name__}: pass e.g. time.monotonic."
            )
        self._max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        # Completed records in least-recently-used order, oldest first.
        self._done: OrderedDict[str, _Done] = OrderedDict()
        self._claims: dict[str, _Claim] = {}
        # One counter for every key: bounded memory, and still growing per key.
        self._fences = itertools.count(1)

    @property
    def max_entries(self) -> int:
        """The most keys this store keeps."""
        return self._max_entries

    def __len__(self) -> int:
        """Count the keys held, expired records not yet dropped included."""
        with self._lock:
            return len(self._done) + len(self._claims)

    def claim_now(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Claim ``key`` for ``owner``, or report its record or running claim."""
        with self._lock:
            now = self._clock()
            done = self._done.get(key)
            if done is not None:
                if done.expires_at > now:
                    self._done.move_to_end(key)
                    return done.result
                del self._done[key]
            running = self._claims.get(key)
            if running is not None and running.lease_until > now:
                return ClaimResult(
                    "in_progress",
                    fingerprint=running.fingerprint,
                    retry_after=running.lease_until - now,
                )
            # Absent, or the holder's lease ran out: the key is this owner's now.
            fence = next(self._fences)
            self._claims[key] = _Claim(owner, fence, fingerprint, now + lease)
            self._evict()
            return ClaimResult("claimed", None, None, 0.0, fence)

    def complete_now(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Turn ``owner``'s claim (``fence``) into ``record`` for ``ttl`` seconds."""
        result = ClaimResult("completed", record, record.fingerprint)
        with self._lock:
            running = self._claims.get(key)
            if running is None or running.owner != owner or running.fence != fence:
                return False
            del self._claims[key]
            self._done[key] = _Done(result, self._clock() + ttl)
            self._done.move_to_end(key)
            self._evict()
            return True

    def release_now(self, key: str, *, owner: str, fence: int) -> bool:
        """Drop ``owner``'s claim (``fence``) on ``key``."""
        with self._lock:
            running = self._claims.get(key)
            if running is None or running.owner != owner or running.fence != fence:
                return False
            del self._claims[key]
            return True

    def get_now(self, key: str) -> IdempotencyRecord | None:
        """Return the unexpired record of ``key``, or ``None``; counts as a use."""
        done = self._entry_now(key)
        return None if done is None else done.result.record

    def _entry_now(self, key: str) -> _Done | None:
        """Like :meth:`get_now`, returning the entry: the record's fields as slots.

        ``@idempotent`` calls this on each hit of a MemoryStore (its attributes
        ``value``, ``error`` and ``fingerprint`` are the record's).
        """
        if not _GIL:
            return self._get_locked(key)
        # Every hit comes here, so no lock: with the GIL each dict operation
        # below is atomic, and a record is immutable once stored. A key that
        # another thread drops meanwhile was still a hit when it was read.
        done = self._done.get(key)
        if done is None:
            return None
        if done.expires_at <= self._clock():
            self._drop_expired(key, done)
            return None
        try:  # noqa: SIM105 - contextlib.suppress costs more than the lookup
            self._done.move_to_end(key)
        except KeyError:
            pass
        return done

    def _get_locked(self, key: str) -> _Done | None:
        # _entry_now without a GIL (free-threaded builds): under the lock.
        with self._lock:
            done = self._done.get(key)
            if done is None:
                return None
            if done.expires_at <= self._clock():
                del self._done[key]
                return None
            self._done.move_to_end(key)
            return done

    def _drop_expired(self, key: str, done: _Done) -> None:
        with self._lock:
            if self._done.get(key) is done:
                del self._done[key]

    def forget_now(self, key: str) -> None:
        """Drop the record or claim of ``key``: the next call runs again.

        Forgetting an in-progress key lets the next call run at once; the
        running call's result is then not recorded.
        """
        with self._lock:
            self._done.pop(key, None)
            self._claims.pop(key, None)
        board.land(self, key)

    async def claim(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Claim ``key`` for ``owner``, or report its record or running claim."""
        return self.claim_now(key, owner=owner, lease=lease, fingerprint=fingerprint)

    async def complete(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Turn ``owner``'s claim into ``record``; wakes the key's waiters."""
        try:
            return self.complete_now(
                key, owner=owner, fence=fence, record=record, ttl=ttl
            )
        finally:
            board.land(self, key)

    async def release(self, key: str, *, owner: str, fence: int) -> bool:
        """Drop ``owner``'s claim on ``key``; wakes the key's waiters."""
        try:
            return self.release_now(key, owner=owner, fence=fence)
        finally:
            board.land(self, key)

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Return the unexpired record of ``key``, or ``None``; counts as a use."""
        return self.get_now(key)

    async def forget(self, key: str) -> None:
        """Drop the record or claim of ``key``, as :meth:`forget_now` does."""
        self.forget_now(key)

    async def wait(self, key: str, *, timeout: float) -> None:  # noqa: ASYNC109 - the protocol's bound
        """Return when ``key``'s claim lands in this process, or after ``timeout``."""
        flight, waiters = board.join_loop(self, key)
        try:
            with self._lock:
                running = self._claims.get(key)
                if running is None or running.lease_until <= self._clock():
                    return
            with anyio.move_on_after(timeout):
                await waiters.event.wait()
        finally:
            board.leave(self, key, flight, waiters)

    def clear(self) -> None:
        """Drop every record and claim."""
        with self._lock:
            self._done.clear()
            self._claims.clear()

    def _evict(self) -> None:
        # Caller holds the lock. Only completed records go; claims are running work.
        excess = len(self._done) + len(self._claims) - self._max_entries
        while excess > 0 and self._done:
            self._done.popitem(last=False)
            excess -= 1
