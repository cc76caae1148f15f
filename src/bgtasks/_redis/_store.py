"""RedisStore: the idempotency store shared by every worker process and host.

Each operation is one round trip: ``claim``, ``complete``, ``release`` and
``forget`` are one Lua script each, ``get`` one HMGET. A duplicate that waits
is woken by a PUBLISH from whichever process completes or releases the key
(one subscription per event loop serves all its waiters), and looks again
after ``timeout`` in any case, since pub/sub is fire-and-forget.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import coredis
import coredis.client
import coredis.exceptions
import coredis.retry

from .._idempotency.stores import ClaimResult, IdempotencyRecord
from .._idempotency.waiting import board
from ..exceptions import BackendUnavailableError, RecordSerializationError
from ._codec import (
    JSONSerializer,
    Serializer,
    check_serializer,
    decode_error,
    decode_value,
    encode_error,
    encode_value,
)
from ._connector import Connector
from ._scripts import CLAIM, COMPLETE, FORGET, RELEASE
from ._spawn import current_loop, spawn_system_task
from ._streams import close_streams_on_exit

__all__ = ["RedisStore"]

_SCHEMES = ("redis", "rediss", "unix")

#: A dropped connection (a pooled one, after Redis restarted) is retried at
#: once on a fresh one; the scripts are idempotent for their caller, so a
#: retry cannot double an effect. Timeouts are not retried: the caller's own.
_RETRY = coredis.retry.ConstantRetryPolicy(
    (coredis.exceptions.ConnectionError,), retries=2, delay=0.01
)


class _Listener:
    """One event loop's subscription to the landing channel, while it has waiters."""

    __slots__ = ("scope", "subscribed", "users")

    def __init__(self) -> None:
        self.subscribed = anyio.Event()
        self.scope = anyio.CancelScope()
        self.users = 0


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _text(data: bytes | str) -> str:
    return data.decode() if isinstance(data, bytes) else data


def _raw(data: bytes | str) -> bytes:
    return data.encode() if isinstance(data, str) else data


def _fingerprint_arg(fingerprint: str | None) -> str:
    # "=" marks a present fingerprint, so "" and None stay apart.
    return "" if fingerprint is None else "=" + fingerprint


def _fingerprint_of(stored: bytes | str | None) -> str | None:
    return None if stored is None else _text(stored)[1:]


def _where(url: str) -> str:
    # How errors name the server: never the credentials in the URL.
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{parts.hostname or 'localhost'}{port}"


def _verified_tls(url: str) -> str:
    """Make a ``rediss://`` URL verify the server's certificate and host name.

    coredis accepts any certificate unless told otherwise; a URL that sets
    ``ssl_cert_reqs`` or ``ssl_check_hostname`` itself is left as it is.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss":
        return url
    query = parse_qsl(parts.query, keep_blank_values=True)
    if not {"ssl_cert_reqs", "ssl_check_hostname"} & {name for name, _ in query}:
        query += [("ssl_cert_reqs", "required"), ("ssl_check_hostname", "true")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix:
        raise TypeError(
            f"RedisStore(prefix=...) must be a non-empty str, got {prefix!r}: pass "
            'the app\'s own name, such as prefix="shop".'
        )
    if "{" in prefix or "}" in prefix:
        raise ValueError(
            f"RedisStore(prefix={prefix!r}) must not contain braces: they would "
            "change the hash tag that keeps a key's data on one cluster slot."
        )
    return prefix


def _check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(
            f"RedisStore(timeout=...) must be a number of seconds, got "
            f"{type(timeout).__name__}: pass e.g. timeout=2.0."
        )
    if not 0 < timeout < math.inf:
        raise ValueError(
            f"RedisStore(timeout={timeout}) must be positive and finite: every "
            "Redis call needs a bound."
        )
    return float(timeout)


class RedisStore:
    """An idempotency store in Redis (or Valkey), shared by processes and hosts.

    Make it once, at import time, with :meth:`from_url`: it opens connections
    lazily in whatever event loop (asyncio or trio) first uses it, one client
    per loop, and :meth:`aclose` closes them. Or pass a coredis client you
    entered yourself (``async with client``): it then serves the loop you
    entered it on, and you close it.

    Every key lives under ``prefix`` and expires: a claim after its lease, a
    record after its ``ttl``, a key's fence counter with the longest of them.

    Args:
        client: an entered ``coredis.Redis`` or ``coredis.RedisCluster``.
        prefix: the first part of every key and of the landing channel; give
            each app its own.
        timeout: seconds any one Redis call may take; past it, or on any
            connection error, calls raise ``BackendUnavailableError``.
        serializer: turns results into bytes and back (JSON by default); an
            object with ``dumps(obj)`` and ``loads(data)``. Never pickle.

    Raises:
        TypeError, ValueError: an argument is not what it must be.
    """

    __slots__ = ("_channel", "_connector", "_listeners", "_prefix", "_serializer")

    def __init__(
        self,
        client: coredis.client.Client[Any],
        *,
        prefix: str = "bgtasks",
        timeout: float = 2.0,
        serializer: Serializer | None = None,
    ) -> None:
        if not isinstance(cast("object", client), coredis.client.Client):
            raise TypeError(
                f"RedisStore(client) takes a coredis client, got "
                f"{type(client).__name__}: use RedisStore.from_url(url) to make one."
            )
        location = client.connection_pool.location
        where = str(location) if location else type(client).__name__
        self._setup(None, client, prefix, _check_timeout(timeout), serializer, where)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "bgtasks",
        timeout: float = 2.0,
        serializer: Serializer | None = None,
    ) -> RedisStore:
        """Return a store that connects to ``url`` lazily, in each loop that uses it.

        Args:
            url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://``
                for TLS (the server's certificate and host name are verified,
                unless the URL sets ``ssl_cert_reqs`` or ``ssl_check_hostname``),
                or ``unix:///path/to/redis.sock``.
            prefix: the first part of every key, as for :class:`RedisStore`.
            timeout: seconds any one Redis call may take.
            serializer: turns results into bytes and back (JSON by default).

        Raises:
            ValueError: ``url`` is not a Redis URL.

        Examples:
            >>> store = RedisStore.from_url("redis://localhost:6379/0", prefix="shop")
        """
        if not isinstance(cast("object", url), str) or urlsplit(url).scheme not in (
            _SCHEMES
        ):
            raise ValueError(
                f"RedisStore.from_url(url) needs a redis://, rediss:// or unix:// "
                f"URL, got {url!r}."
            )

        target = _verified_tls(url)
        seconds = _check_timeout(timeout)
        # The client bounds connecting and each reply by ``timeout`` itself, so
        # a call needs no cancel scope of ours; unless the URL sets its own.
        query = {name for name, _ in parse_qsl(urlsplit(url).query)}
        bounded = not {"connect_timeout", "stream_timeout"} & query

        def factory() -> coredis.Redis[bytes]:
            client = coredis.Redis.from_url(
                target,
                decode_responses=False,
                retry_policy=_RETRY,
                connect_timeout=seconds,
                stream_timeout=seconds,
            )
            return close_streams_on_exit(client)

        factory()  # a malformed URL fails here, at construction, not on first use
        store = cls.__new__(cls)
        store._setup(factory, None, prefix, seconds, serializer, _where(url), bounded)
        return store

    def _setup(  # noqa: PLR0917 - private, called twice, by position
        self,
        factory: Callable[[], coredis.Redis[bytes]] | None,
        client: coredis.client.Client[Any] | None,
        prefix: str,
        timeout: float,
        serializer: Serializer | None,
        where: str,
        bounded: bool = False,
    ) -> None:
        self._prefix = _check_prefix(prefix)
        self._serializer = (
            JSONSerializer() if serializer is None else check_serializer(serializer)
        )
        self._connector = Connector(
            factory=factory,
            client=cast("coredis.Redis[bytes] | None", client),
            timeout=timeout,
            where=where,
            bounded=bounded,
        )
        self._channel = f"{self._prefix}:idem:landed"
        self._listeners: dict[object, _Listener] = {}

    def __repr__(self) -> str:
        return f"RedisStore({self._connector.where!r}, prefix={self._prefix!r})"

    @property
    def prefix(self) -> str:
        """The first part of every key this store writes."""
        return self._prefix

    @property
    def timeout(self) -> float:
        """Seconds any one Redis call may take."""
        return self._connector.timeout

    def keys_of(self, key: str) -> tuple[str, str]:
        """Return the Redis keys of ``key``: its state hash and its fence counter.

        Both share a hash tag (``{...}``), so a cluster keeps them on one slot.
        A key holding braces itself is tagged by its SHA-256 instead.
        """
        tag = key
        if "{" in key or "}" in key:
            tag = hashlib.sha256(key.encode()).hexdigest()
        base = f"{self._prefix}:idem:{{{tag}}}"
        return base + ":s", base + ":n"

    async def claim(
        self, key: str, *, owner: str, lease: float, fingerprint: str | None
    ) -> ClaimResult:
        """Claim ``key`` for ``owner`` for ``lease`` seconds, unless it is taken.

        Returns ``"completed"`` with the record, ``"in_progress"`` with the
        seconds left of the holder's lease, or ``"claimed"`` with a new fence.

        Raises:
            BackendUnavailableError: Redis did not answer in time or failed.
            RecordSerializationError: a stored record cannot be read back.
        """
        keys = self.keys_of(key)
        args = (owner, _ms(lease), _fingerprint_arg(fingerprint))
        reply = cast("list[Any]", await self._connector.script(CLAIM, keys, args))
        kind = reply[0]
        if kind == 1:
            return ClaimResult("claimed", fence=int(reply[1]))
        held = _fingerprint_of(reply[1])
        if kind == 3:
            return ClaimResult(
                "in_progress", fingerprint=held, retry_after=int(reply[2]) / 1000
            )
        record = self._record(held, reply[2], reply[3])
        return ClaimResult("completed", record, held)

    def _record(
        self,
        fingerprint: str | None,
        value: bytes | str | None,
        error: bytes | str | None,
    ) -> IdempotencyRecord:
        if error is not None:
            return IdempotencyRecord(None, decode_error(_raw(error)), fingerprint)
        decoded = None if value is None else decode_value(self._serializer, _raw(value))
        return IdempotencyRecord(decoded, None, fingerprint)

    async def complete(
        self,
        key: str,
        *,
        owner: str,
        fence: int,
        record: IdempotencyRecord,
        ttl: float,
    ) -> bool:
        """Replace ``owner``'s claim (``fence``) by ``record``, kept ``ttl`` seconds.

        ``ttl`` may be ``math.inf`` (never expires). Wakes the key's waiters in
        every process. Returns ``False`` and stores nothing when the claim is
        no longer this owner's and fence.

        Raises:
            RecordSerializationError: the value cannot be serialized; the claim
                was released first, so the next call runs.
            BackendUnavailableError: Redis did not answer in time or failed.
        """
        if record.error is not None:
            field, payload = "e", encode_error(record.error)
        else:
            field = "v"
            try:
                payload = encode_value(self._serializer, record.value)
            except RecordSerializationError:
                # Unreachable Redis: the lease frees the key; this error matters more.
                with contextlib.suppress(BackendUnavailableError):
                    await self.release(key, owner=owner, fence=fence)
                raise
        keys = self.keys_of(key)
        args = (
            owner,
            str(fence),
            0 if ttl == math.inf else _ms(ttl),
            _fingerprint_arg(record.fingerprint),
            field,
            payload,
            self._channel,
            key,
        )
        try:
            done: object = await self._connector.script(COMPLETE, keys, args)
        finally:
            board.land(self, key)
        return done == 1

    async def release(self, key: str, *, owner: str, fence: int) -> bool:
        """Drop the claim ``owner`` holds with ``fence``; ``False`` if not held.

        Raises:
            BackendUnavailableError: Redis did not answer in time or failed.
        """
        state = self.keys_of(key)[0]
        args = (owner, str(fence), self._channel, key)
        try:
            done = await self._connector.script(RELEASE, (state,), args)
        finally:
            board.land(self, key)
        return done == 1

    async def get(self, key: str) -> IdempotencyRecord | None:
        """Return the unexpired record of ``key``, or ``None``.

        Raises:
            BackendUnavailableError: Redis did not answer in time or failed.
            RecordSerializationError: the stored record cannot be read back.
        """
        state = self.keys_of(key)[0]
        found = await self._connector.call(
            lambda client: client.hmget(state, ("s", "p", "v", "e"))
        )
        if found[0] is None or _text(found[0]) != "done":
            return None
        return self._record(_fingerprint_of(found[1]), found[2], found[3])

    async def forget(self, key: str) -> None:
        """Drop the record or claim of ``key``; a running owner can no longer complete.

        Raises:
            BackendUnavailableError: Redis did not answer in time or failed.
        """
        state = self.keys_of(key)[0]
        args = (self._channel, key)
        try:
            await self._connector.script(FORGET, (state,), args)
        finally:
            board.land(self, key)

    async def wait(self, key: str, *, timeout: float) -> None:  # noqa: ASYNC109 - the store protocol's bound
        """Return once ``key``'s claim may have landed, or after ``timeout`` seconds.

        Woken by a completion or release in any process sharing this Redis.
        Returns at once if the key holds no running claim. A lost message or a
        lapsed lease costs at most ``timeout``: the caller then claims again.
        Redis errors end the wait early; the caller's next claim reports them.
        """
        flight, waiters = board.join_loop(self, key)
        loop = current_loop()
        listener = self._subscribe(loop)
        try:
            with anyio.move_on_after(timeout):
                if not listener.subscribed.is_set():
                    with anyio.move_on_after(self._connector.timeout):
                        await listener.subscribed.wait()
                # Looked at after subscribing, so no landing from now on is missed.
                if await self._running(key):
                    await waiters.event.wait()
        except BackendUnavailableError:
            return
        finally:
            board.leave(self, key, flight, waiters)
            self._unsubscribe(loop, listener)

    async def _running(self, key: str) -> bool:
        state = self.keys_of(key)[0]
        found = await self._connector.call(lambda client: client.hget(state, "s"))
        return found is not None and _text(found) == "run"

    def _subscribe(self, loop: object) -> _Listener:
        """Join this loop's subscription, starting it for the first waiter."""
        listener = self._listeners.get(loop)
        if listener is None:
            listener = self._listeners[loop] = _Listener()
            spawn_system_task(loop, lambda: self._listen(loop, listener))
        listener.users += 1
        return listener

    def _unsubscribe(self, loop: object, listener: _Listener) -> None:
        # The last waiter of a loop closes its subscription: nothing stays open
        # between waits, nor when the loop shuts down.
        listener.users -= 1
        if listener.users == 0:
            listener.scope.cancel()
            if self._listeners.get(loop) is listener:
                del self._listeners[loop]

    async def _listen(self, loop: object, listener: _Listener) -> None:
        """Wake this process's waiters on every landing message, until cancelled."""
        retry = coredis.retry.ExponentialBackoffRetryPolicy(
            (coredis.exceptions.ConnectionError,),
            retries=None,
            base_delay=0.05,
            max_delay=1.0,
            jitter=True,
        )
        try:
            with listener.scope:
                client = await self._connector.client()
                async with client.pubsub(
                    channels=(self._channel,),
                    ignore_subscribe_messages=True,
                    retry_policy=retry,
                ) as pubsub:
                    listener.subscribed.set()
                    async for message in pubsub:
                        board.land(self, _text(cast("bytes", message["data"])))
        except Exception:  # waiters fall back to polling; the next one resubscribes
            pass
        finally:
            listener.subscribed.set()
            if self._listeners.get(loop) is listener:
                del self._listeners[loop]

    async def aclose(self) -> None:
        """Close the connections this store opened; a later call opens new ones.

        A client passed in by the caller stays open: it is theirs to close.
        Waiters of this loop stop listening and fall back to their timeouts.
        """
        listener = self._listeners.pop(current_loop(), None)
        if listener is not None:
            listener.scope.cancel()
        await self._connector.aclose()
