"""What an idempotent call does once its key is known: replay, wait, or run and record.

With a local store (MemoryStore) the hit path is in the wrappers themselves;
everything here runs only on the rarer paths: a duplicate of a running call,
or the end of a call that ran. With an async store (Redis) every call starts
with one claim: :meth:`Policy.begin` is a generator of store calls, driven by
``await`` in async wrappers and through the event loop's ``from_thread`` in
sync ones, so the per-call logic is written once for both.
"""

from __future__ import annotations

import copy as _copy
import itertools
import logging
import os
import secrets
import threading
import time
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Literal, TypeAlias, TypeVar

import anyio

from .. import _observe
from .._context import DuplicateOutcome, report_outcome
from .._deadline import checkpoint, remaining
from ..exceptions import (
    BackendUnavailableError,
    DuplicateTaskError,
    IdempotencyConflictError,
    RecordedError,
    RecordSerializationError,
)
from .keys import KeyFunction
from .stores import (
    ClaimResult,
    IdempotencyRecord,
    IdempotencyStore,
    LocalStore,
    Recorded,
)
from .waiting import LoopWaiters, board

_E = TypeVar("_E", bound=BaseException)

# How often a waiting thread looks at its deadline and its task's cancellation.
_SYNC_WAIT_SLICE = 0.05
# The same for a thread waiting on an async store: each slice costs a claim.
_REMOTE_WAIT_SLICE = 0.5

_logger = logging.getLogger("bgtasks")

__all__ = ["RUN", "UNGUARDED", "OnDuplicate", "OnStoreError", "Policy", "new_owner"]

OnDuplicate = Literal["wait", "skip", "raise"]
OnStoreError = Literal["raise", "run"]

#: Returned by ``settle_*`` when the caller now holds the claim and must run.
RUN: Any = object()
#: Returned by ``begin`` when the store failed and ``on_store_error="run"``.
UNGUARDED: Any = object()

#: One store call of :meth:`Policy.begin`: a coroutine function and its arguments.
StoreCall: TypeAlias = tuple[Callable[..., Awaitable[Any]], tuple[Any, ...]]


class _Owners:
    """Unique owner tokens: a random per-process prefix and a counter."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.prefix = secrets.token_hex(8)
        self.counter = itertools.count(1)


_owners = _Owners()


def _reseed_owners() -> None:
    _owners.prefix = secrets.token_hex(8)


if hasattr(os, "register_at_fork"):  # pragma: no branch - absent on Windows only
    # A forked child must never reuse its parent's tokens against a shared store.
    os.register_at_fork(after_in_child=_reseed_owners)


def new_owner() -> str:
    """Return a token no other call, in any process, will use."""
    return f"{_owners.prefix}-{next(_owners.counter)}"


def _no_op() -> None:
    """Stand in for the wrapper's ``start_reporting`` until it is built."""


class Policy:
    """The options of one decorated function, and its slow paths."""

    __slots__ = (
        "fingerprint_of",
        "key_of",
        "lease",
        "local",
        "mode",
        "name",
        "on_store_error",
        "record_errors",
        "reporting",
        "start_reporting",
        "store",
        "ttl",
        "wait_timeout",
    )

    def __init__(
        self,
        *,
        name: str,
        store: IdempotencyStore,
        key_of: KeyFunction,
        fingerprint_of: KeyFunction | None,
        mode: OnDuplicate,
        ttl: float,
        lease: float,
        wait_timeout: float | None,
        record_errors: tuple[type[Exception], ...],
        on_store_error: OnStoreError = "raise",
    ) -> None:
        self.name = name
        self.store = store
        # The synchronous twin of the store, when it has one (MemoryStore).
        self.local = store if isinstance(store, LocalStore) else None
        self.on_store_error = on_store_error
        self.key_of = key_of
        self.fingerprint_of = fingerprint_of
        self.mode = mode
        self.ttl = ttl
        self.lease = lease
        self.wait_timeout = wait_timeout
        self.record_errors = record_errors
        # Set by ``logged`` above: report replays, waits and skips to it.
        self.reporting = False
        self.start_reporting: Callable[[], None] = _no_op

    def replay(self, record: Recorded | None, fingerprint: str | None) -> Any:
        """Return (or raise) a completed key's recorded outcome."""
        if record is None:
            raise TypeError(
                f"the idempotency store of {self.name}() returned a completed "
                "claim without a record: ClaimResult.record must be set."
            )
        self._check_conflict(record.fingerprint, fingerprint)
        error = record.error
        if error is not None:
            if isinstance(error, RecordedError):
                # Read back from a shared store: rebuilt only from listed types.
                raise error.resolve(self.record_errors).with_traceback(None)
            # A fresh copy per replay: concurrent replays would otherwise share,
            # and keep growing, one instance's traceback and context.
            raise _detached(error).with_traceback(None)
        return record.value

    def _check_conflict(self, held: str | None, fingerprint: str | None) -> None:
        if fingerprint is not None and held is not None and held != fingerprint:
            raise IdempotencyConflictError(
                f"an idempotency key of {self.name}() was reused with different "
                "arguments; use a key that includes what differs, or the same "
                "arguments."
            )

    def settle(
        self, found: ClaimResult, fingerprint: str | None, outcome: DuplicateOutcome
    ) -> Any:
        # A "claimed" or "completed" result: run, or replay.
        if found.status == "claimed":
            return RUN
        if self.reporting:
            report_outcome(outcome)
        if _observe.hook is not None:
            _observe.hook.idempotency(
                self.name, "hit" if outcome == "replayed" else "wait"
            )
        return self.replay(found.record, fingerprint)

    def duplicate_now(self, found: ClaimResult, fingerprint: str | None) -> Any:
        # The key is running elsewhere and this mode does not wait.
        self._check_conflict(found.fingerprint, fingerprint)
        if self.mode == "skip":
            if self.reporting:
                report_outcome("skipped")
            if _observe.hook is not None:
                _observe.hook.idempotency(self.name, "skip")
            return None
        raise DuplicateTaskError(
            f"{self.name}() is already running for this idempotency key "
            '(on_duplicate="raise").'
        )

    def _wait_for(
        self,
        found: ClaimResult,
        fingerprint: str | None,
        deadline: float | None,
        now: float,
    ) -> float:
        """Return how long to wait for the running call before looking again."""
        self._check_conflict(found.fingerprint, fingerprint)
        timeout = found.retry_after
        if deadline is not None:
            left = deadline - now
            if left <= 0:
                raise DuplicateTaskError(
                    f"gave up after waiting {self.wait_timeout:g}s for the running "
                    f"call of {self.name}() with the same idempotency key."
                )
            timeout = min(timeout, left)
        return max(0.0, min(timeout, threading.TIMEOUT_MAX))

    def _waits(
        self,
        found: ClaimResult,
        key: str,
        owner: str,
        fingerprint: str | None,
        *,
        in_thread: bool,
    ) -> Generator[tuple[float, Any], None, Any]:
        """Settle a duplicate, for either kind: returns ``(outcome, claim)``.

        ``outcome`` is :data:`RUN` with the caller's new ``claim`` when the key
        became the caller's, else the value to return.

        Replays, skips or raises at once when it can; otherwise yields, again
        and again, how long to wait and what to wait on (a ``threading.Event``
        in a thread, a ``LoopWaiters`` on a loop), having joined the key's
        flight *before* looking at the store, so no landing is missed.
        """
        if found.status != "in_progress":
            return self.settle(found, fingerprint, "replayed"), None
        if self.mode != "wait":
            return self.duplicate_now(found, fingerprint), None
        clock = time.monotonic if in_thread else anyio.current_time
        deadline = None if self.wait_timeout is None else clock() + self.wait_timeout
        store = self.local
        assert store is not None  # only wrappers of a local store come here
        while True:
            waiter: object
            loop_waiters: LoopWaiters | None = None
            if in_thread:
                flight, waiter = board.join_thread(store, key)
            else:
                flight, loop_waiters = board.join_loop(store, key)
                waiter = loop_waiters
            try:
                found = store.claim_now(
                    key, owner=owner, lease=self.lease, fingerprint=fingerprint
                )
                if found.status == "claimed":
                    return RUN, found  # the new claim: its fence is the one to use
                if found.status != "in_progress":
                    return self.settle(found, fingerprint, "waited"), None
                if in_thread:
                    # A blocked thread cannot be cancelled: it waits in short
                    # slices, and checkpoint() raises for a passed @timeout or a
                    # cancelled task.
                    checkpoint()
                yield self._wait_for(found, fingerprint, deadline, clock()), waiter
            finally:
                board.leave(store, key, flight, loop_waiters)

    def settle_sync(
        self, found: ClaimResult, key: str, owner: str, fingerprint: str | None
    ) -> Any:
        """Replay, skip, raise, or wait in this thread until the key is free or done."""
        steps = self._waits(found, key, owner, fingerprint, in_thread=True)
        try:
            while True:
                wait, event = next(steps)
                left = remaining()
                event.wait(min(wait, _SYNC_WAIT_SLICE, wait if left is None else left))
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    async def settle_async(
        self, found: ClaimResult, key: str, owner: str, fingerprint: str | None
    ) -> Any:
        """Like :meth:`settle_sync`, waiting as a cancellable task on the loop."""
        steps = self._waits(found, key, owner, fingerprint, in_thread=False)
        try:
            while True:
                timeout, waiters = next(steps)
                with anyio.move_on_after(timeout):
                    await waiters.event.wait()
        except StopIteration as done:
            return done.value
        finally:
            steps.close()

    def succeed(  # noqa: PLR0917 - private, on every run, by position
        self,
        key: str,
        owner: str,
        fence: int,
        fingerprint: str | None,
        value: object,
        slot: dict[str, Any] | None = None,
    ) -> None:
        """Record the owner's result in the local store and wake the key's waiters.

        ``slot`` is the ``logged`` call's fields read before the body ran: it
        ran, so an outcome a nested call wrote there is not this call's.
        """
        if slot is not None:
            slot.pop("outcome", None)
        store = self.local
        assert store is not None  # only wrappers of a local store come here
        try:
            store.complete_now(
                key,
                owner=owner,
                fence=fence,
                record=IdempotencyRecord(value, None, fingerprint),
                ttl=self.ttl,
            )
        finally:
            board.land(store, key)

    def fail(  # noqa: PLR0917 - private, on every run, by position
        self,
        key: str,
        owner: str,
        fence: int,
        fingerprint: str | None,
        exc: BaseException,
        slot: dict[str, Any] | None = None,
    ) -> None:
        """Record a listed error, or release the claim; then wake the waiters."""
        if slot is not None:
            slot.pop("outcome", None)  # it ran: see succeed
        store = self.local
        assert store is not None  # only wrappers of a local store come here
        try:
            if self.record_errors and isinstance(exc, self.record_errors):
                store.complete_now(
                    key,
                    owner=owner,
                    fence=fence,
                    record=IdempotencyRecord(None, _detached(exc), fingerprint),
                    ttl=self.ttl,
                )
            else:
                store.release_now(key, owner=owner, fence=fence)
        finally:
            board.land(store, key)

    # The async store: every method below talks to ``self.store``.

    def begin(
        self, key: str, owner: str, fingerprint: str | None, *, in_thread: bool
    ) -> Generator[StoreCall, Any, tuple[Any, ClaimResult | None]]:
        """Claim ``key`` in an async store, waiting out a running duplicate.

        Yields the store calls to make (the caller awaits each one and sends
        its result back, or throws its error in) and returns ``(RUN, claim)``
        when the caller must run, ``(UNGUARDED, None)`` when the store failed
        and ``on_store_error="run"``, or ``(outcome, None)`` for a replay, a
        skip or a finished wait (raising what those raise).
        """
        store = self.store
        claim_args = (key, owner, self.lease, fingerprint)
        try:
            found: ClaimResult = yield (_claim, (store, *claim_args))
            if found.status == "in_progress" and self.mode == "wait":
                clock = time.monotonic if in_thread else anyio.current_time
                deadline = (
                    None if self.wait_timeout is None else clock() + self.wait_timeout
                )
                while True:  # found is "in_progress" here
                    timeout = self._wait_for(found, fingerprint, deadline, clock())
                    if in_thread:
                        # See _waits: a thread sees its deadline and its task's
                        # cancellation between slices.
                        checkpoint()
                        left = remaining()
                        if left is not None:
                            timeout = min(timeout, left)
                        timeout = min(timeout, _REMOTE_WAIT_SLICE)
                    yield (_wait, (store, key, timeout))
                    found = yield (_claim, (store, *claim_args))
                    if found.status != "in_progress":
                        break
                if found.status == "claimed":
                    return RUN, found
                return self.settle(found, fingerprint, "waited"), None
        except BackendUnavailableError as error:
            if self.on_store_error == "raise":
                raise
            # Our own message: where Redis is and how it failed, no secrets.
            _logger.warning(
                "the idempotency store of %s() is unavailable (%s); running it "
                'without a claim (on_store_error="run"), so a duplicate may run too',
                self.name,
                error,
            )
            return UNGUARDED, None
        if found.status == "claimed":
            return RUN, found
        if found.status == "in_progress":
            return self.duplicate_now(found, fingerprint), None
        return self.settle(found, fingerprint, "replayed"), None

    async def finish(  # noqa: PLR0917 - private, on every run, by position
        self,
        key: str,
        owner: str,
        claim: ClaimResult,
        fingerprint: str | None,
        value: object,
        exc: BaseException | None,
    ) -> None:
        """Complete or release the claim in the async store, even when cancelled.

        A store that fails here is logged and the caller's own outcome stands:
        the claim then lapses with its lease. A value the store cannot
        serialize raises :class:`RecordSerializationError` (the store released
        the claim).
        """
        store = self.store
        with anyio.CancelScope(shield=True):
            try:
                if exc is None:
                    record = IdempotencyRecord(value, None, fingerprint)
                elif self.record_errors and isinstance(exc, self.record_errors):
                    record = IdempotencyRecord(None, _detached(exc), fingerprint)
                else:
                    await store.release(key, owner=owner, fence=claim.fence)
                    return
                await store.complete(
                    key, owner=owner, fence=claim.fence, record=record, ttl=self.ttl
                )
            except RecordSerializationError as error:
                raise RecordSerializationError(
                    f"{self.name}() finished with a result its idempotency store "
                    "cannot serialize, so nothing was recorded and its claim was "
                    "released: return JSON-able values, or give the store a "
                    "serializer= that handles them."
                ) from error
            except BackendUnavailableError as error:
                _logger.warning(
                    "the idempotency store of %s() is unavailable (%s): its outcome "
                    "was not recorded, and its key stays claimed until its lease ends",
                    self.name,
                    error,
                )


async def _claim(
    store: IdempotencyStore,
    key: str,
    owner: str,
    lease: float,
    fingerprint: str | None,
) -> ClaimResult:
    return await store.claim(key, owner=owner, lease=lease, fingerprint=fingerprint)


async def _wait(store: IdempotencyStore, key: str, timeout: float) -> None:  # noqa: ASYNC109 - the store's bound
    await store.wait(key, timeout=timeout)


def _detached(exc: _E) -> _E:
    """Copy ``exc`` without its traceback, cause and context.

    A recorded error lives for the key's ttl: the original's traceback would
    keep every frame it passed through, with their locals, alive that long. An
    exception whose constructor cannot rebuild it from ``args`` is kept as it
    is; its traceback is reset each time it is replayed.
    """
    try:
        clone = _copy.copy(exc)
    except Exception:  # a constructor that cannot rebuild it from its args
        return exc
    clone.__traceback__ = clone.__cause__ = clone.__context__ = None
    return clone
