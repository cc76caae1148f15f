"""``@idempotent``: run a task once per key; duplicates get the recorded result."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Generator
from datetime import timedelta
from typing import Any, Literal, Protocol, TypeVar, cast, overload

import anyio.from_thread
from typing_extensions import ParamSpec

from .. import _observe
from .._context import IDEMPOTENT_MARKER, outcome_var, report_outcome
from .._validate import to_seconds
from .._wrap import callable_name, check_decoratable, unwrap_partial, wrap_same_kind
from ..exceptions import NoEventLoopError
from .keys import make_fingerprint, make_key
from .policy import (
    RUN,
    UNGUARDED,
    OnDuplicate,
    OnStoreError,
    Policy,
    StoreCall,
    new_owner,
)
from .stores import IdempotencyStore, LocalStore, MemoryStore, Recorded

__all__ = ["default_store", "idempotent"]

P = ParamSpec("P")
R = TypeVar("R")

_DEFAULT_TTL = 24 * 3600.0
_DEFAULT_LEASE = 600.0
_MODES = ("wait", "skip", "raise")
_STORE_ERRORS = ("raise", "run")
_MISSING: Any = object()

# Shared by every @idempotent function not given store=.
_default_store = MemoryStore()


def default_store() -> MemoryStore:
    """Return the process-wide store used when ``store=`` is not passed."""
    return _default_store


class SkippingDecorator(Protocol):
    """What ``idempotent(..., on_duplicate="skip")`` returns: results may be None."""

    @overload
    def __call__(
        self, func: Callable[P, Coroutine[Any, Any, R]], /
    ) -> Callable[P, Coroutine[Any, Any, R | None]]: ...

    @overload
    def __call__(self, func: Callable[P, R], /) -> Callable[P, R | None]: ...


def _error_types(value: object) -> tuple[type[Exception], ...]:
    items: tuple[object, ...] = value if isinstance(value, tuple) else (value,)  # pyright: ignore[reportUnknownVariableType]
    types: list[type[Exception]] = []
    for item in items:
        if not (isinstance(item, type) and issubclass(item, Exception)):
            raise TypeError(
                f"@idempotent(record_errors=...) takes Exception subclasses (a type "
                f"or a tuple of types), got {item!r}; cancellation and other "
                "BaseExceptions are never recorded."
            )
        types.append(item)
    return tuple(types)


@overload
def idempotent(
    *,
    key: str | Callable[..., str],
    on_duplicate: Literal["wait", "raise"] = "wait",
    ttl: float | timedelta = _DEFAULT_TTL,
    lease: float | timedelta = _DEFAULT_LEASE,
    wait_timeout: float | timedelta | None = None,
    namespace: str | None = None,
    store: IdempotencyStore | None = None,
    fingerprint: bool | Callable[..., str] = False,
    record_errors: type[Exception] | tuple[type[Exception], ...] = (),
    on_store_error: OnStoreError = "raise",
) -> Callable[[Callable[P, R]], Callable[P, R]]: ...


@overload
def idempotent(
    *,
    key: str | Callable[..., str],
    on_duplicate: Literal["skip"],
    ttl: float | timedelta = _DEFAULT_TTL,
    lease: float | timedelta = _DEFAULT_LEASE,
    wait_timeout: None = None,
    namespace: str | None = None,
    store: IdempotencyStore | None = None,
    fingerprint: bool | Callable[..., str] = False,
    record_errors: type[Exception] | tuple[type[Exception], ...] = (),
    on_store_error: OnStoreError = "raise",
) -> SkippingDecorator: ...


def idempotent(  # noqa: D417 - func only exists to reject a bare @idempotent
    func: object = None,
    /,
    *,
    key: str | Callable[..., str] = _MISSING,
    on_duplicate: OnDuplicate = "wait",
    ttl: float | timedelta = _DEFAULT_TTL,
    lease: float | timedelta = _DEFAULT_LEASE,
    wait_timeout: float | timedelta | None = None,
    namespace: str | None = None,
    store: IdempotencyStore | None = None,
    fingerprint: bool | Callable[..., str] = False,
    record_errors: type[Exception] | tuple[type[Exception], ...] = (),
    on_store_error: OnStoreError = "raise",
) -> Any:
    """Run the decorated task once per key; repeated calls get the recorded result.

    The first call for a key claims it, runs, and records its result (the same
    Python object: ``0``, ``False``, ``None``, tuples, models) for ``ttl``
    seconds; later calls return that result without running. A duplicate
    arriving while the first call runs waits for it by default (single flight,
    across tasks and threads). If the call raises or is cancelled, the claim is
    released and the exception propagates unchanged; a waiting duplicate then
    takes over and runs. Works on ``def`` and ``async def``.

    Args:
        key: a callable taking the function's arguments and returning a str,
            or a ``str.format`` template over the argument names, such as
            ``"welcome:{email}"`` (positional and keyword calls give the same
            key). Required.
        on_duplicate: what a call does while another call of its key runs:
            ``"wait"`` for its outcome, ``"skip"`` (return ``None`` at once) or
            ``"raise"`` :class:`~bgtasks.exceptions.DuplicateTaskError`.
        ttl: how long a result is kept, in seconds or as a timedelta; 24 hours
            by default. May be ``math.inf`` (kept until evicted).
        lease: how long a running call holds its key before another caller may
            take it over, as if it had crashed; 10 minutes by default. Set it
            above the longest run you expect.
        wait_timeout: the longest a duplicate waits (``"wait"`` only); then it
            raises :class:`~bgtasks.exceptions.DuplicateTaskError`. ``None``
            waits as long as the first call holds the key.
        namespace: prefix of every key, ``"<module>.<qualname>"`` by default;
            set it so that renaming the function keeps its keys.
        store: where claims and results live; a process-wide
            :class:`~bgtasks.MemoryStore` by default, or a shared store such
            as ``bgtasks.redis.RedisStore`` (any async
            :class:`~bgtasks.IdempotencyStore`).
        fingerprint: ``True`` to compare each call's arguments (by ``repr``)
            with those of the call that holds the key, raising
            :class:`~bgtasks.exceptions.IdempotencyConflictError` when they
            differ; or a callable taking the arguments and returning a str.
        record_errors: exception types recorded as the outcome instead of
            releasing the key: later calls re-raise a copy of the exception
            instance without running.
        on_store_error: what a call does when its store cannot be reached:
            ``"raise"`` :class:`~bgtasks.exceptions.BackendUnavailableError`
            without running (the default: fail closed), or ``"run"`` the body
            anyway, unguarded, with a WARNING.

    Raises:
        TypeError: an option has the wrong type, ``key`` is missing, or the
            decorator was used bare (``@idempotent`` without parentheses).
        ValueError: an unknown ``on_duplicate`` or ``on_store_error``, a
            non-positive duration, an
            empty key, or a key template naming something that is not an
            argument.

    Examples:
        >>> @idempotent(key="welcome:{email}")
        ... def send_welcome_email(email: str, username: str) -> str:
        ...     return f"sent to {username}"
        >>> send_welcome_email("ada@example.com", "Ada")
        'sent to Ada'
        >>> send_welcome_email(email="ada@example.com", username="Someone else")
        'sent to Ada'
    """
    if func is not None:
        raise TypeError(
            "@idempotent needs its options: write @idempotent(key=...) with "
            'parentheses, e.g. @idempotent(key="welcome:{email}").'
        )
    if key is _MISSING:
        raise TypeError(
            "@idempotent(key=...) is required: pass a template over the argument "
            'names, such as key="welcome:{email}", or a callable taking the '
            "function's arguments and returning a str."
        )
    if not (isinstance(key, str) or callable(key)):
        raise TypeError(
            f"@idempotent(key=...) must be a str template or a callable, got "
            f"{type(key).__name__}."
        )
    if key == "":
        raise ValueError(
            '@idempotent(key="") is empty, so every call would share one key: name '
            'the arguments that make a call unique, as in key="welcome:{email}".'
        )
    if on_duplicate not in _MODES:
        raise ValueError(
            f"@idempotent(on_duplicate={on_duplicate!r}) must be one of "
            f"{', '.join(map(repr, _MODES))}."
        )
    if on_store_error not in _STORE_ERRORS:
        raise ValueError(
            f"@idempotent(on_store_error={on_store_error!r}) must be one of "
            f'{", ".join(map(repr, _STORE_ERRORS))}: "raise" fails closed, "run" '
            "runs the body unguarded when the store is down."
        )
    ttl_s = to_seconds(ttl, "@idempotent(ttl=...)", finite=False)
    lease_s = to_seconds(lease, "@idempotent(lease=...)")
    wait_s = (
        None
        if wait_timeout is None
        else to_seconds(wait_timeout, "@idempotent(wait_timeout=...)")
    )
    if wait_s is not None and on_duplicate != "wait":
        raise ValueError(
            f'@idempotent(wait_timeout=...) only applies to on_duplicate="wait", '
            f"not {on_duplicate!r}: drop one of them."
        )
    given = cast("object", namespace)  # users may pass anything: check it
    if given is not None and not (isinstance(given, str) and given):
        raise TypeError(
            f"@idempotent(namespace=...) must be a non-empty str, got {namespace!r}."
        )
    given = cast("object", store)
    if given is not None and not isinstance(given, IdempotencyStore):
        raise TypeError(
            f"@idempotent(store=...) must implement IdempotencyStore (async claim, "
            f"complete, release, get, forget, wait), got {type(given).__name__}."
        )
    if not (isinstance(fingerprint, bool) or callable(fingerprint)):
        raise TypeError(
            f"@idempotent(fingerprint=...) must be a bool or a callable, got "
            f"{type(fingerprint).__name__}."
        )
    errors = _error_types(record_errors)
    chosen_store = _default_store if store is None else store

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        check_decoratable(func, "idempotent")
        qualname = callable_name(func)
        target = unwrap_partial(func)
        module = getattr(target, "__module__", None) or type(target).__module__
        ns = namespace if namespace is not None else f"{module}.{qualname}"
        fingerprint_of = None
        if fingerprint is not False:
            custom = None if fingerprint is True else fingerprint
            # A MemoryStore's fingerprints stay in the process: no digest needed.
            fingerprint_of = make_fingerprint(
                func,
                custom,
                qualname,
                in_process=isinstance(chosen_store, MemoryStore),
            )
        policy = Policy(
            name=qualname,
            store=chosen_store,
            key_of=make_key(func, key, ns, qualname),
            fingerprint_of=fingerprint_of,
            mode=on_duplicate,
            ttl=ttl_s,
            lease=lease_s,
            wait_timeout=wait_s,
            record_errors=errors,
            on_store_error=on_store_error,
        )
        local = policy.local is not None
        wrapper = wrap_same_kind(
            func,
            "idempotent",
            sync=functools.partial(
                _sync_wrapper if local else _sync_store_wrapper, policy
            ),
            async_=functools.partial(
                _async_wrapper if local else _async_store_wrapper, policy
            ),
        )
        # After update_wrapper, so an idempotent below does not replace it.
        wrapper.__dict__[IDEMPOTENT_MARKER] = policy.start_reporting
        return wrapper

    return decorate


def _hit_lookup(store: LocalStore) -> Callable[[str], Recorded | None]:
    """Return what a hit calls: a MemoryStore's entry lookup, else ``get_now``.

    A MemoryStore entry holds the record's fields as slots, cheaper to read on
    every hit than the named tuple's; a subclass overriding ``get_now`` keeps it.
    """
    if isinstance(store, MemoryStore) and type(store).get_now is MemoryStore.get_now:
        return store._entry_now  # pyright: ignore[reportPrivateUsage]
    return store.get_now


def _sync_wrapper(policy: Policy, func: Callable[..., Any]) -> Callable[..., Any]:
    # Locals: the hit path is a handful of lookups, no attribute access on policy.
    store, key_of, fingerprint_of = policy.local, policy.key_of, policy.fingerprint_of
    assert store is not None  # chosen for a local store only
    lookup = _hit_lookup(store)
    lease = policy.lease
    reporting = False  # until a logged above calls report(): one cell read a hit

    def idempotent_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(args, kwargs)
        fp = None if fingerprint_of is None else fingerprint_of(args, kwargs)
        record = lookup(key)
        if record is not None:
            if reporting:
                report_outcome("replayed")
            if _observe.hook is not None:
                _observe.hook.idempotency(policy.name, "hit")
            if record.error is None and (
                fp is None or fp == record.fingerprint or record.fingerprint is None
            ):
                return record.value  # what policy.replay returns, without the call
            return policy.replay(record, fp)
        # The logged call around, read now: the body may set another one.
        slot = outcome_var.get() if reporting else None
        owner = new_owner()
        found = store.claim_now(key, owner=owner, lease=lease, fingerprint=fp)
        if found.status != "claimed":
            settled, claim = policy.settle_sync(found, key, owner, fp)
            if settled is not RUN:
                return settled
            found = claim
        if _observe.hook is not None:
            _observe.hook.idempotency(policy.name, "miss")
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:
            policy.fail(key, owner, found.fence, fp, exc, slot)
            raise
        policy.succeed(key, owner, found.fence, fp, value, slot)
        return value

    def report() -> None:
        nonlocal reporting
        reporting = policy.reporting = True

    policy.start_reporting = report
    return idempotent_wrapper


def _async_wrapper(
    policy: Policy, func: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    # Locals: the hit path is a handful of lookups, no attribute access on policy.
    store, key_of, fingerprint_of = policy.local, policy.key_of, policy.fingerprint_of
    assert store is not None  # chosen for a local store only
    lookup = _hit_lookup(store)
    lease = policy.lease
    reporting = False  # until a logged above calls report(): one cell read a hit

    async def idempotent_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(args, kwargs)
        fp = None if fingerprint_of is None else fingerprint_of(args, kwargs)
        record = lookup(key)
        if record is not None:
            if reporting:
                report_outcome("replayed")
            if _observe.hook is not None:
                _observe.hook.idempotency(policy.name, "hit")
            if record.error is None and (
                fp is None or fp == record.fingerprint or record.fingerprint is None
            ):
                return record.value  # what policy.replay returns, without the call
            return policy.replay(record, fp)
        # The logged call around, read now: the body may set another one.
        slot = outcome_var.get() if reporting else None
        owner = new_owner()
        found = store.claim_now(key, owner=owner, lease=lease, fingerprint=fp)
        if found.status != "claimed":
            settled, claim = await policy.settle_async(found, key, owner, fp)
            if settled is not RUN:
                return settled
            found = claim
        if _observe.hook is not None:
            _observe.hook.idempotency(policy.name, "miss")
        try:
            value = await func(*args, **kwargs)
        except BaseException as exc:
            policy.fail(key, owner, found.fence, fp, exc, slot)
            raise
        policy.succeed(key, owner, found.fence, fp, value, slot)
        return value

    def report() -> None:
        nonlocal reporting
        reporting = policy.reporting = True

    policy.start_reporting = report
    return idempotent_wrapper


def _sync_store_wrapper(policy: Policy, func: Callable[..., Any]) -> Callable[..., Any]:
    # An async store, from a worker thread: each store call goes to the loop.
    key_of, fingerprint_of = policy.key_of, policy.fingerprint_of

    def idempotent_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(args, kwargs)
        fp = None if fingerprint_of is None else fingerprint_of(args, kwargs)
        slot = outcome_var.get() if policy.reporting else None
        owner = new_owner()
        steps = policy.begin(key, owner, fp, in_thread=True)
        decision, claim = _drive_in_thread(policy, steps)
        if decision is UNGUARDED:
            if _observe.hook is not None:
                _observe.hook.idempotency(policy.name, "miss")
            return func(*args, **kwargs)
        if decision is not RUN:
            return decision
        if _observe.hook is not None:
            _observe.hook.idempotency(policy.name, "miss")
        try:
            value = func(*args, **kwargs)
        except BaseException as exc:
            if slot is not None:
                slot.pop("outcome", None)  # it ran: see Policy.succeed
            _from_thread(policy, policy.finish, (key, owner, claim, fp, None, exc))
            raise
        if slot is not None:
            slot.pop("outcome", None)
        _from_thread(policy, policy.finish, (key, owner, claim, fp, value, None))
        return value

    return idempotent_wrapper


def _async_store_wrapper(
    policy: Policy, func: Callable[..., Awaitable[Any]]
) -> Callable[..., Awaitable[Any]]:
    # An async store: one claim per call, replays included (one round trip).
    key_of, fingerprint_of = policy.key_of, policy.fingerprint_of

    async def idempotent_wrapper(*args: Any, **kwargs: Any) -> Any:
        key = key_of(args, kwargs)
        fp = None if fingerprint_of is None else fingerprint_of(args, kwargs)
        slot = outcome_var.get() if policy.reporting else None
        owner = new_owner()
        decision, claim = await _drive(policy.begin(key, owner, fp, in_thread=False))
        if decision is UNGUARDED:
            if _observe.hook is not None:
                _observe.hook.idempotency(policy.name, "miss")
            return await func(*args, **kwargs)
        if decision is not RUN:
            return decision
        if _observe.hook is not None:
            _observe.hook.idempotency(policy.name, "miss")
        try:
            value = await func(*args, **kwargs)
        except BaseException as exc:
            if slot is not None:
                slot.pop("outcome", None)  # it ran: see Policy.succeed
            await policy.finish(key, owner, claim, fp, None, exc)
            raise
        if slot is not None:
            slot.pop("outcome", None)
        await policy.finish(key, owner, claim, fp, value, None)
        return value

    return idempotent_wrapper


async def _drive(steps: Generator[StoreCall, Any, Any]) -> Any:
    """Run ``steps``' store calls on this loop; return what the generator returns."""
    try:
        fn, args = next(steps)
        while True:
            try:
                result = await fn(*args)
            except Exception as exc:  # noqa: PERF203 - each store error goes back in
                fn, args = steps.throw(exc)
            else:
                fn, args = steps.send(result)
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


def _drive_in_thread(policy: Policy, steps: Generator[StoreCall, Any, Any]) -> Any:
    """Run ``steps``' store calls on the loop this worker thread belongs to."""
    try:
        fn, args = next(steps)
        while True:
            try:
                result = _from_thread(policy, fn, args)
            except Exception as exc:  # noqa: PERF203 - each store error goes back in
                fn, args = steps.throw(exc)
            else:
                fn, args = steps.send(result)
    except StopIteration as done:
        return done.value
    finally:
        steps.close()


def _from_thread(
    policy: Policy, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]
) -> Any:
    """Await ``fn(*args)`` on this worker thread's loop, or say why there is none."""
    started = False

    async def call() -> Any:
        nonlocal started
        started = True
        return await fn(*args)

    try:
        return anyio.from_thread.run(call)
    except RuntimeError:
        if started:  # the store's own error, not a missing loop
            raise
        raise NoEventLoopError(
            f"{policy.name}() is a sync function with an async idempotency store "
            f"({type(policy.store).__name__}), called outside an anyio worker "
            "thread, so there is no event loop to reach the store through: make it "
            "async def, run it in a worker thread of the running loop (Starlette's "
            "BackgroundTasks, anyio.to_thread.run_sync), or use MemoryStore."
        ) from None
