"""Mirror one worker's task states to Redis, and read every worker's tasks back.

A :class:`TaskMirror` is what a TaskManager with a Redis backend talks to. The
manager still runs its tasks locally and calls :meth:`TaskMirror.push` at each
transition (sync, O(1), no await); the mirror's loop (:meth:`TaskMirror.run`)
writes the coalesced updates in one pipeline per flush, heartbeats this
worker's lease, relays cancels from other workers, reaps workers whose lease
lapsed (their unfinished tasks become ``interrupted``, exactly once) and trims
what Redis keeps. Key schema, with ``P`` the prefix (``{...}`` = Redis Cluster
hash tag, so every script touches one slot):

- ``P:task:{ID}`` hash: the task's fields (all text), plus ``worker`` (the
  writer) and ``gen`` (one token per submission, so a reused id is told apart).
- ``{P}:index`` / ``{P}:finished`` sorted sets: id by created / finished ms.
- ``P:workers`` sorted set: worker id by lease deadline (server ms).
- ``P:worker:{WID}`` hash (host, pid, started, lease_until) with ``:tasks``,
  ``:cancels``, ``:fenced`` and ``:reaping`` beside it; channel ``P:ctl:WID``.

How a manager uses it: ``await task_group.start(mirror.run)`` on entry; one
``push`` per transition, with the fields of the design (``name created state
started finished attempt progress message next_attempt_at error_type
error_message result result_omitted``; ``id``, ``worker`` and ``gen`` are the
mirror's); ``await mirror.close()`` after the drain, once the drained tasks'
final states were pushed. Reads (``get``, ``list``, ``request_cancel``)
return the hash's text fields and raise :class:`BackendUnavailableError`.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, NamedTuple, TypeAlias, TypeVar

import anyio
import coredis
from anyio.abc import TaskStatus
from coredis.exceptions import NoScriptError, RedisError
from coredis.tokens import PureToken

from .._validate import to_seconds
from . import task_scripts as scripts
from ._errors import BackendUnavailableError

__all__ = [
    "BackendUnavailableError",
    "CancelRequest",
    "Changes",
    "FieldValue",
    "TaskMirror",
]

logger = logging.getLogger("bgtasks")

T = TypeVar("T")
FieldValue: TypeAlias = "str | int | float | bool | None"
Client: TypeAlias = "coredis.Redis[str] | coredis.RedisCluster[str]"

_TERMINAL = frozenset({"succeeded", "failed", "cancelled", "interrupted"})
_FINAL_STATES = sorted(_TERMINAL)  # one finished set each, in this order
_ACTIVE_STATES = ("pending", "running")  # counted per worker, in its hash
# Nothing lives forever, even if every worker vanished while a task ran.
_SAFETY_TTL = 7 * 24 * 3600.0
# Tasks per script call on a single server (a call blocks Redis for ~5 ms).
_BATCH = 1000
# At most this many tasks in one flush, so one flush stays one bounded pipeline.
_MAX_FLUSH = 20_000
# Workers examined per reaper pass.
_REAP_SCAN = 16
# Workers whose active tasks the shared statistics add up.
_MAX_WORKERS = 1000
# The change feed: a worker publishes the ids it wrote at most this often while
# a dashboard watches, asks whether one does at most every _WATCH_CHECK
# seconds otherwise, and sends "*" (reload) instead of more than _FEED_IDS ids.
_PUBLISH_EVERY = 0.25
_WATCH_CHECK = 1.0
_FEED_IDS = 1000  # the feed sends at most 1000 tasks a batch too
_FEED_ENTRIES = 100  # entries the stream keeps (MAXLEN ~): ~2.5 MB at worst
_FEED_TTL_MS = 60_000  # the stream goes once nobody published for this long
_WATCH_MS = 5000  # a reader's mark lasts this long; readers renew it each read


class CancelRequest(NamedTuple):
    """What :meth:`TaskMirror.request_cancel` found.

    Attributes:
        outcome: ``"requested"`` (the task is active: its worker was told),
            ``"finished"`` (already final) or ``"unknown"`` (no such task).
        worker: the owning worker's id when requested, else None.
    """

    outcome: Literal["requested", "finished", "unknown"]
    worker: str | None


class Changes(NamedTuple):
    """What :meth:`TaskMirror.changes` read: other workers' changed tasks.

    Attributes:
        tasks: the changed tasks' fields, as :meth:`TaskMirror.get` returns them.
        position: pass it to the next call.
        gap: some changes were missed (trimmed, or too many): reload instead.
    """

    tasks: list[dict[str, str]]
    position: str
    gap: bool


class _Pending:
    """The fields of one task waiting to be written; later pushes merge in."""

    __slots__ = ("create", "fields", "final", "gen")

    def __init__(self, gen: str, create: bool, fields: dict[str, FieldValue]) -> None:
        self.gen = gen
        self.create = create
        self.final = False
        self.fields = fields


def _text(value: FieldValue) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    return repr(value) if isinstance(value, float) else str(value)


def _ms(value: FieldValue) -> float:
    """Epoch seconds (as pushed) to whole milliseconds, the index scores."""
    try:
        seconds = time.time() if value is None else float(value)
    except ValueError:
        seconds = time.time()
    return float(math.floor(seconds * 1000.0))


def _array(reply: object) -> list[Any]:
    """Return a script's array reply as a list (coredis types it loosely)."""
    if not isinstance(reply, (list, tuple)):
        raise BackendUnavailableError(f"Redis answered a {type(reply).__name__}")
    return list(reply)  # pyright: ignore[reportUnknownArgumentType]


def _seconds(name: str, value: object) -> float:
    return to_seconds(value, f"TaskMirror({name}=...)")


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"TaskMirror({name}={value!r}) takes an int >= 1.")
    return value


class TaskMirror:
    """Mirror this worker's tasks to Redis and answer for every worker's tasks.

    Args:
        client: an entered ``coredis.Redis(..., decode_responses=True)`` (or
            ``RedisCluster``); the mirror never opens or closes it.
        prefix: the first part of every key, one per application.
        lease: seconds a worker may go without heartbeating before another
            worker declares it dead and reports its unfinished tasks
            ``interrupted``. Give it at least 3 x ``timeout``.
        max_finished: finished tasks kept in Redis (the oldest are dropped).
        finished_ttl: seconds a finished task is kept in Redis.
        on_cancel: called with a task id that another worker asked to cancel
            (maybe more than once per task: pub/sub and the durable set).
        on_fenced: called with the ids of this worker's tasks that another
            worker declared interrupted while this one was unreachable.
        timeout: seconds any Redis call may take before it counts as failed.
        max_pending: tasks whose updates may wait while Redis is unreachable;
            past it the oldest unfinished updates are dropped, with a WARNING.
        heartbeat_interval / reap_interval / progress_interval / max_backoff:
            the loop's periods (defaults: lease/3, lease/2, 0.25 s, 1 s).
        reap_grace: seconds of contact with Redis before this worker judges
            others (default: lease), so that after an outage every live
            worker renews its lease before anyone is declared dead.
    """

    def __init__(  # noqa: PLR0915  # the mirror's state: one attribute a line
        self,
        client: Client,
        *,
        prefix: str = "bgtasks",
        lease: float = 10.0,
        max_finished: int = 10_000,
        finished_ttl: float = 3600.0,
        on_cancel: Callable[[str], object] = lambda task_id: None,
        on_fenced: Callable[[Sequence[str]], object] = lambda task_ids: None,
        timeout: float = 2.0,
        max_pending: int = 100_000,
        heartbeat_interval: float | None = None,
        reap_interval: float | None = None,
        progress_interval: float = 0.25,
        max_backoff: float = 1.0,
        reap_grace: float | None = None,
    ) -> None:
        if not prefix:
            raise ValueError(f"TaskMirror(prefix={prefix!r}) takes a non-empty str.")
        self._client = client
        self._prefix = prefix
        self._lease = _seconds("lease", lease)
        self._max_finished = _count("max_finished", max_finished)
        self._ttl = _seconds("finished_ttl", finished_ttl)
        self._timeout = _seconds("timeout", timeout)
        self._max_pending = _count("max_pending", max_pending)
        self._heartbeat_interval = _seconds(
            "heartbeat_interval", heartbeat_interval or self._lease / 3
        )
        self._reap_interval = _seconds(
            "reap_interval", reap_interval or self._lease / 2
        )
        self._progress_interval = _seconds("progress_interval", progress_interval)
        self._max_backoff = _seconds("max_backoff", max_backoff)
        self._reap_grace = self._lease if reap_grace is None else reap_grace
        if self._reap_grace:
            self._reap_grace = _seconds("reap_grace", self._reap_grace)
        self._on_cancel = on_cancel
        self._on_fenced = on_fenced
        self._cluster = isinstance(client, coredis.RedisCluster)
        self._ttl_ms = str(math.ceil(self._ttl * 1000))
        self._safety_ms = str(math.ceil(max(self._ttl, _SAFETY_TTL) * 1000))
        self._index_key = f"{{{prefix}}}:index"
        self._finished_key = f"{{{prefix}}}:finished"
        # The index scripts' keys: created, finished, durations, one per final state.
        self._indexes = [
            self._index_key,
            self._finished_key,
            f"{{{prefix}}}:durations",
            *(f"{{{prefix}}}:finished:{state}" for state in _FINAL_STATES),
        ]
        self._final_states = json.dumps(_FINAL_STATES)
        self._feed_keys = [f"{{{prefix}}}:changes", f"{{{prefix}}}:watched"]
        self._workers_key = f"{prefix}:workers"
        self._task_head = f"{prefix}:task:{{"
        self._host, self._pid = socket.gethostname(), str(os.getpid())
        self._started = repr(time.time())
        self._wid = self._new_wid()
        self._gen_head = secrets.token_urlsafe(6) + "."
        self._gen_next = 0
        # Updates waiting to be written: state changes, and progress-only ones.
        self._dirty: dict[str, _Pending] = {}
        self._progress: dict[str, _Pending] = {}
        # Submission token of every task that is active here (pushed, not final).
        self._active: dict[str, str] = {}
        # Tasks whose creating update was dropped: not mirrored at all.
        self._lost: set[str] = set()
        # The full latest fields of each task written here and not yet final in
        # Redis, so a record that Redis lost (a restart) is written whole again.
        self._known: dict[str, tuple[str, dict[str, FieldValue]]] = {}
        # This worker's active tasks per state, as the shared statistics see them.
        self._counts: dict[str, int] = dict.fromkeys(_ACTIVE_STATES, 0)
        self._counts_sent: dict[str, int] = {}
        # Ids written since the last publish (None: too many, readers reload).
        self._changed: set[str] | None = set()
        self._watched = False
        # The first ask waits a period too, so a short-lived worker never asks.
        self._published_at = self._watch_checked_at = time.monotonic()
        self._rejected: set[str] = set()
        self._dropped = 0
        self._writes = 0
        self._wake = anyio.Event()
        self._woken = False
        self._flush_lock = anyio.Lock()
        self._progress_flushed = time.monotonic()
        self._down = False
        self._contact_since: float | None = None
        self._server_clock: tuple[float, float] | None = None
        self._scripts_loaded = False
        self._control_scope: anyio.CancelScope | None = None
        self._run_scope: anyio.CancelScope | None = None
        self._closed = False
        self._fence_report = False

    # -- keys -------------------------------------------------------------

    @property
    def worker_id(self) -> str:
        """Return this worker's current id (a new one after it was fenced)."""
        return self._wid

    @property
    def task_writes(self) -> int:
        """How many task writes were sent to Redis so far (for tests, stats)."""
        return self._writes

    def _task_key(self, task_id: str) -> str:
        return f"{self._task_head}{task_id}}}"

    def _worker_keys(self, wid: str) -> tuple[str, str, str, str, str]:
        """Return the worker hash, its fenced, tasks, cancels and reaping keys."""
        head = f"{self._prefix}:worker:{{{wid}}}"
        return (
            head,
            f"{head}:fenced",
            f"{head}:tasks",
            f"{head}:cancels",
            f"{head}:reaping",
        )

    def _channel(self, wid: str) -> str:
        return f"{self._prefix}:ctl:{wid}"

    @staticmethod
    def _new_wid() -> str:
        return secrets.token_urlsafe(12)

    # -- push (the manager's hot path) -------------------------------------

    def push(  # noqa: PLR0912  # one flat function: this is the hot path
        self,
        task_id: str,
        fields: dict[str, FieldValue],
        *,
        terminal: bool,
        progress_only: bool = False,
    ) -> None:
        """Queue a task's changed fields; the loop writes them soon.

        Sync, O(1), never awaits; call it on the event loop's thread. The
        mirror keeps ``fields`` (not a copy: this runs at every transition of
        every task), so pass a dict that nothing changes afterwards. The first
        push of a submission (an id not active here) creates its record, so it
        should carry ``name``, ``created`` and ``state``. Later pushes of the
        same task merge into what is still waiting (the latest value wins).
        State changes wake the writer at once; ``progress_only`` updates are
        written at most every ``progress_interval`` seconds. Values are text,
        numbers, booleans or None (stored as "", read back as absent).
        """
        if task_id in self._lost:
            if terminal:
                self._lost.discard(task_id)
            return
        if progress_only:
            entry = self._dirty.get(task_id) or self._progress.get(task_id)
            if entry is not None:
                entry.fields.update(fields)
                return
            gen = self._active.get(task_id)
            if gen is None:  # progress of a task never created here: nothing to add to
                return
            if not self._progress and not self._woken:
                # The loop may be parked with nothing due: let it time this one.
                self._woken = True
                self._wake.set()
            self._progress[task_id] = _Pending(gen, False, fields)
            self._bound()
            return
        entry = self._dirty.get(task_id)
        if entry is None:
            entry = self._progress.pop(task_id, None)
            if entry is not None:
                entry.fields.update(fields)
            else:
                gen = self._active.get(task_id)
                if gen is None:
                    gen = f"{self._gen_head}{self._gen_next:x}"
                    self._gen_next += 1
                    if not terminal:
                        self._active[task_id] = gen
                    entry = _Pending(gen, True, fields)
                else:
                    entry = _Pending(gen, False, fields)
            entry.final = entry.final or terminal  # before _bound weighs it
            self._dirty[task_id] = entry
            self._bound()
        else:
            entry.fields.update(fields)
        if terminal:
            entry.final = True
            self._active.pop(task_id, None)
        if not self._woken:
            self._woken = True
            self._wake.set()

    def _wake_writer(self) -> None:
        if not self._woken:
            self._woken = True
            self._wake.set()

    def _bound(self) -> None:
        """Keep the waiting updates bounded: drop progress, unfinished, then old."""
        excess = len(self._dirty) + len(self._progress) - self._max_pending
        if excess <= 0:
            return
        # Drop a tenth at once, so a full buffer costs O(1) per push on average.
        excess = max(excess, self._max_pending // 10)
        dropped = 0
        while self._progress and dropped < excess:
            self._progress.pop(next(iter(self._progress)))
            dropped += 1
        if dropped < excess:
            need = excess - dropped
            doomed = [tid for tid, e in self._dirty.items() if not e.final][:need]
            if len(doomed) < need:  # only final updates left: the oldest go
                finals = (tid for tid, e in self._dirty.items() if e.final)
                doomed += itertools.islice(finals, need - len(doomed))
            for tid in doomed:
                entry = self._dirty.pop(tid, None)
                if entry is not None and entry.create and not entry.final:
                    self._lost.add(tid)  # its record never reached Redis
                    self._active.pop(tid, None)
                elif entry is not None and entry.final:
                    self._forget(tid)
                dropped += 1
        if not self._dropped:
            logger.warning(
                "bgtasks: %d task state updates are waiting for Redis; dropping the "
                "oldest unfinished ones",
                self._max_pending,
            )
        self._dropped += dropped

    # -- Redis calls ---------------------------------------------------------

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T:
        """Run ``request`` within the timeout; Redis failures become ours."""
        try:
            with anyio.fail_after(self._timeout):
                if not self._scripts_loaded:
                    await self._load_scripts()
                try:
                    return await request()
                except NoScriptError:  # the server restarted and forgot them
                    await self._load_scripts()
                    return await request()
        except TimeoutError as exc:
            self._scripts_loaded = False
            raise BackendUnavailableError(
                f"Redis did not answer within {self._timeout:g} s "
                "(RedisBackend(timeout=...) sets the limit)"
            ) from exc
        except (RedisError, OSError) as exc:
            self._scripts_loaded = False
            raise BackendUnavailableError(
                f"Redis failed: {type(exc).__name__}"
            ) from exc

    async def _load_scripts(self) -> None:
        sources = [
            script.source
            for script in (
                scripts.WRITE_TASKS,
                scripts.HEARTBEAT,
                scripts.CLAIM_REAP,
                scripts.INTERRUPT_TASKS,
                scripts.FINISH_REAP,
                scripts.REQUEST_CANCEL,
                scripts.SCAN_INDEX,
                scripts.INDEX_CREATED,
                scripts.INDEX_FINISHED,
                scripts.DELETE_FINISHED,
                scripts.COUNT_TASKS,
                scripts.PUBLISH_CHANGES,
                scripts.READ_CHANGES,
                scripts.SET_COUNTS,
            )
        ]
        if self._cluster:
            # A cluster pipeline routes by key and SCRIPT LOAD has none; the
            # plain command goes to every primary.
            for source in sources:
                await self._client.script_load(source)
        else:
            async with self._client.pipeline(transaction=False) as pipe:
                for source in sources:
                    pipe.script_load(source)
        self._scripts_loaded = True

    def _chunks(self, items: Sequence[T]) -> Iterable[Sequence[T]]:
        """One item per script call on a cluster (one slot), many on one server."""
        step = 1 if self._cluster else _BATCH
        return (items[i : i + step] for i in range(0, len(items), step))

    def _failed(self, exc: BaseException) -> None:
        self._contact_since = None
        if not self._down:
            self._down = True
            # The type only: a Redis error's text can quote the task fields sent.
            logger.warning(
                "bgtasks lost Redis (%s); task states wait in memory (up to %d "
                "tasks) and are retried",
                type(exc.__cause__ or exc).__name__,
                self._max_pending,
            )

    def _reached(self) -> None:
        if self._contact_since is None:
            self._contact_since = time.monotonic()
        if self._down:
            self._down = False
            logger.warning("bgtasks reached Redis again; mirroring task states")
        if self._dropped:
            logger.warning(
                "bgtasks dropped %d task state updates while Redis was unreachable",
                self._dropped,
            )
            self._dropped = 0

    # -- flushing --------------------------------------------------------------

    async def flush(self) -> None:
        """Write every waiting update now, progress included.

        Raises:
            BackendUnavailableError: Redis failed; the updates stay queued.
        """
        await self._flush(progress=True)

    async def _flush(self, *, progress: bool) -> None:
        """Write what waits; progress if ``progress`` or once its period is up."""
        async with self._flush_lock:
            while self._dirty or (
                self._progress and (progress or self._progress_due())
            ):
                batch = self._take(progress=progress or self._progress_due())
                try:
                    await self._write(batch)
                except BaseException:
                    self._restore(batch)
                    raise
                if self._publish_due() <= 0:  # here too: busy, this loop never ends
                    await self._publish()

    def _progress_due(self) -> bool:
        # Checked per batch: under steady load one flush call never returns.
        return time.monotonic() - self._progress_flushed >= self._progress_interval

    def _take(self, *, progress: bool) -> dict[str, _Pending]:
        batch = self._dirty
        if progress and self._progress:
            batch.update(self._progress)
            self._progress = {}
            self._progress_flushed = time.monotonic()
        if len(batch) <= _MAX_FLUSH:
            self._dirty = {}
            return batch
        ids = list(batch)
        self._dirty = {tid: batch[tid] for tid in ids[_MAX_FLUSH:]}
        return {tid: batch[tid] for tid in ids[:_MAX_FLUSH]}

    def _restore(self, batch: dict[str, _Pending]) -> None:
        """Put a failed batch back, under whatever was pushed meanwhile."""
        merged: dict[str, _Pending] = {}
        for tid, old in batch.items():
            new = self._dirty.pop(tid, None) or self._progress.pop(tid, None)
            if new is not None and new.gen != old.gen:
                merged[tid] = new  # the id was submitted again: the new one wins
                continue
            if new is not None:
                old.fields.update(new.fields)
                old.final = old.final or new.final
            merged[tid] = old
        merged.update(self._dirty)
        self._dirty = merged

    async def _write(self, batch: dict[str, _Pending]) -> None:
        wid = self._wid
        ids = list(batch)
        rows: list[list[str | int]] = []
        created: list[str | float] = []
        active: list[str] = []
        finals: list[str] = []
        for tid, entry in batch.items():
            self._learn(tid, entry)
            fields = entry.fields
            state = fields.get("state")
            row: list[str | int] = [
                tid,
                entry.gen,
                1 if entry.create else 0,
                "" if state is None else str(state),
            ]
            for name, value in fields.items():
                if name != "state":
                    row.append(name)
                    row.append(value if type(value) is str else _text(value))
            rows.append(row)
            if entry.create:
                created += (tid, _ms(fields.get("created")))
            if entry.final:
                finals.append(tid)
            else:
                active.append(tid)
        head = [wid, self._ttl_ms, self._safety_ms, self._task_head]
        calls = [
            ([self._task_key(str(chunk[0][0]))] if self._cluster else [], chunk)
            for chunk in self._chunks(rows)
        ]
        worker_key, _, tasks_key, _, _ = self._worker_keys(wid)
        counts = None if self._counts == self._counts_sent else dict(self._counts)

        async def send() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                # Listed as this worker's before the write, so a crash now is reaped.
                if active:
                    pipe.sadd(tasks_key, active)
                if counts is not None:
                    pipe.evalsha(
                        scripts.SET_COUNTS.sha,
                        [worker_key],
                        [x for k, v in counts.items() for x in (f"n:{k}", v)],
                    )
                replies = [
                    pipe.evalsha(
                        scripts.WRITE_TASKS.sha,
                        keys,
                        [*head, json.dumps(chunk, separators=(",", ":"))],
                    )
                    for keys, chunk in calls
                ]
                if created:
                    pipe.evalsha(
                        scripts.INDEX_CREATED.sha,
                        self._indexes,
                        [self._final_states, json.dumps(created)],
                    )
                if finals:
                    pipe.srem(tasks_key, finals)
            return [await reply for reply in replies]

        results = await self._call(send)
        self._writes += len(ids)
        if counts is not None:
            self._counts_sent = counts
        accepted = self._sort_out(
            [len(chunk) for _, chunk in calls], results, ids, batch
        )
        self._note_changed(accepted)
        done = [tid for tid in finals if tid in accepted]
        if done:
            await self._index_finished(
                {tid: self._finish_of(tid, batch[tid]) for tid in done}
            )
            for tid in done:
                self._forget(tid)

    def _note_changed(self, ids: Iterable[str]) -> None:
        changed = self._changed
        if changed is not None:
            changed.update(ids)
            if len(changed) > _FEED_IDS:
                self._changed = None  # too many for one entry: readers reload

    def _publish_due(self) -> float:
        """Seconds until the written ids should be published (inf: nothing to)."""
        if self._changed is not None and not self._changed:
            return math.inf
        if self._watched:
            return self._published_at + _PUBLISH_EVERY - time.monotonic()
        return self._watch_checked_at + _WATCH_CHECK - time.monotonic()

    async def _publish(self) -> None:
        """Tell watching dashboards which tasks changed: one stream entry.

        Unwatched, it only asks (once a second at most, and only after writes)
        whether a dashboard started watching; the ids noted meanwhile go then.

        Raises:
            BackendUnavailableError: Redis failed; the ids stay noted.
        """
        changed = self._changed
        ids = "*" if changed is None else json.dumps(sorted(changed))
        args: list[str | int] = [_FEED_ENTRIES, _FEED_TTL_MS, self._wid, ids]

        async def send() -> Any:
            return await self._client.evalsha(
                scripts.PUBLISH_CHANGES.sha, self._feed_keys, args
            )

        watched = bool(await self._call(send))
        now = time.monotonic()
        self._published_at = self._watch_checked_at = now
        self._watched = watched
        if self._changed is changed:
            self._changed = set()
        elif changed is not None and self._changed is not None:
            self._changed -= changed  # keep what was written during the call

    def _learn(self, tid: str, entry: _Pending) -> None:
        """Merge a write into the task's full fields; keep the counts per state."""
        known = self._known.get(tid)
        if known is None or known[0] != entry.gen:
            if not entry.create:
                return  # never created here (a reused id's stray write): no record
            if known is not None:
                self._count(known[1].get("state"), -1)
            elif entry.final:
                # Written whole and final at once (a short task's usual case):
                # never counted as active, nothing to write again. Skipping
                # the copy matters at every task, in CPU and in the collector.
                return
            fields = dict(entry.fields)
            self._known[tid] = (entry.gen, fields)
            self._count(fields.get("state"), 1)
            return
        fields = known[1]
        before = fields.get("state")
        fields.update(entry.fields)
        after = fields.get("state")
        if after != before:
            self._count(before, -1)
            self._count(after, 1)

    def _forget(self, tid: str) -> None:
        known = self._known.pop(tid, None)
        if known is not None:
            self._count(known[1].get("state"), -1)

    def _count(self, state: FieldValue, delta: int) -> None:
        if state is not None and (name := str(state)) in self._counts:
            self._counts[name] += delta

    def _finish_of(self, tid: str, entry: _Pending) -> tuple[float, str, float]:
        """Return a finished task's finished ms, state and run time (-1: none)."""
        known = self._known.get(tid)
        fields = entry.fields if known is None else known[1]
        started, finished = fields.get("started"), fields.get("finished")
        # Not contextlib.suppress: this runs once per finished task.
        try:
            took = max(0.0, float(finished) - float(started))  # type: ignore[arg-type]
        except (TypeError, ValueError):  # missing, or not numbers: no run time
            took = -1.0
        return _ms(finished), str(fields.get("state")), took

    def _recreate(self, tid: str) -> bool:
        """Queue a whole new record for a task Redis lost; False if not ours."""
        known = self._known.get(tid)
        if known is None:
            return False
        gen, fields = known
        newer = self._dirty.get(tid) or self._progress.pop(tid, None)
        if newer is not None and newer.gen != gen:
            return False  # the id was submitted again meanwhile: that one wins
        entry = _Pending(gen, True, dict(fields))
        if newer is not None:
            entry.fields.update(newer.fields)
            entry.final = newer.final
        entry.final = entry.final or tid not in self._active
        self._dirty[tid] = entry
        return True

    def _sort_out(
        self,
        sizes: list[int],
        results: list[Any],
        ids: list[str],
        batch: Mapping[str, _Pending],
    ) -> set[str]:
        """Return the ids whose write went through; note the others."""
        accepted = set(ids)
        offset = 0
        for size, codes in zip(sizes, results, strict=True):
            for i in range(0, len(codes), 2):
                code = int(codes[i + 1])
                if code == 2:
                    continue  # our own final write, already there: a retry
                tid = ids[offset + int(codes[i]) - 1]
                accepted.discard(tid)
                if code == 0:
                    self._rejected.add(tid)
                    self._forget(tid)
                    logger.debug("bgtasks: task %s is final in Redis already", tid)
                elif code == -1:
                    self._forget(tid)  # so its later writes are not re-creates
                    logger.warning(
                        "bgtasks: task id %s is active on another worker; this "
                        "worker's task with that id is not mirrored",
                        tid,
                    )
                elif self._recreate(tid):
                    # Redis lost the record (it restarted empty): write it whole.
                    logger.debug("bgtasks: task %s is written again", tid)
                    self._wake_writer()
                else:
                    if batch[tid].final:
                        self._forget(tid)
                    logger.debug("bgtasks: task %s expired from Redis", tid)
            offset += size
        if len(self._rejected) > self._max_pending:
            self._rejected.clear()  # nobody learned of a fence: keep memory bounded
        return accepted

    async def _index_finished(
        self, finished: Mapping[str, tuple[float, str, float]]
    ) -> None:
        """Index finished tasks (ms, state, run time), then trim the indexes."""
        items: list[str | float] = []
        for tid, (ms, state, took) in finished.items():
            items += (tid, ms, state, took)
        args: list[str | int] = [
            self._final_states,
            self._max_finished,
            math.floor((time.time() - self._ttl) * 1000.0),
            json.dumps(items),
        ]

        async def send() -> Any:
            return await self._client.evalsha(
                scripts.INDEX_FINISHED.sha, self._indexes, args
            )

        popped: list[str] = _array(await self._call(send))
        if popped:
            await self._delete_finished(popped)

    async def _delete_finished(self, ids: Sequence[str]) -> None:
        keys = [self._task_key(tid) for tid in ids]

        async def send() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for chunk in self._chunks(keys):
                    pipe.evalsha(scripts.DELETE_FINISHED.sha, chunk, [])

        await self._call(send)

    # -- the worker loop -------------------------------------------------------

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Heartbeat, flush, reap and listen for cancels until cancelled or closed.

        Meant for ``await task_group.start(mirror.run)``: it reports started
        after the first heartbeat (or the first failed attempt: Redis being
        down at start-up delays nothing but the mirroring).
        """
        with anyio.CancelScope() as scope:
            self._run_scope = scope
            try:
                await self.heartbeat()
            except BackendUnavailableError as exc:
                self._failed(exc)
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._heartbeat_loop)
                tg.start_soon(self._flush_loop)
                tg.start_soon(self._reap_loop)
                tg.start_soon(self._control_loop)
                task_status.started()

    async def _heartbeat_loop(self) -> None:
        while True:
            await anyio.sleep(self._heartbeat_interval)
            try:
                await self.heartbeat()
            except BackendUnavailableError as exc:
                self._failed(exc)

    async def _flush_loop(self) -> None:
        backoff = 0.0
        while True:
            if backoff:
                await anyio.sleep(backoff)
            elif not self._dirty:
                wait = self._publish_due()
                if self._progress:
                    due = self._progress_flushed + self._progress_interval
                    wait = min(wait, due - time.monotonic())
                with anyio.move_on_after(wait):
                    await self._wake.wait()
            self._wake = anyio.Event()
            self._woken = False
            try:
                await self._flush(progress=False)
                if self._publish_due() <= 0:  # nothing to write, ids still to tell
                    await self._publish()
            except BackendUnavailableError as exc:
                self._failed(exc)
                backoff = min(max(2 * backoff, 0.05), self._max_backoff)
            else:
                backoff = 0.0
                if self._down or self._dropped:
                    self._reached()

    async def _reap_loop(self) -> None:
        while True:
            # Jitter, so workers started together do not reap in lockstep.
            jitter = 0.75 + secrets.randbelow(500) / 1000
            await anyio.sleep(self._reap_interval * jitter)
            try:
                await self.reap()
            except BackendUnavailableError as exc:
                self._failed(exc)

    async def _control_loop(self) -> None:
        """Take cancels by pub/sub: the fast path (the heartbeat's is durable)."""
        backoff = 0.0
        while True:
            if backoff:
                await anyio.sleep(backoff)
            wid = self._wid
            with anyio.CancelScope() as scope:
                self._control_scope = scope
                try:
                    async with self._client.pubsub(
                        channels=[self._channel(wid)],
                        ignore_subscribe_messages=True,
                        retry_policy=None,
                        subscription_timeout=self._timeout,
                    ) as pubsub:
                        backoff = 0.0
                        async for message in pubsub:
                            data = message["data"]
                            if isinstance(data, str):
                                self._notify(self._on_cancel, data)
                except Exception as exc:  # connection lost (in a group): resubscribe
                    self._failed(exc)
            if not scope.cancelled_caught:  # not our move to a new channel: wait a bit
                backoff = min(max(2 * backoff, 0.05), self._max_backoff)

    async def heartbeat(self) -> None:
        """Renew this worker's lease and take the cancels asked of it.

        If another worker declared this one dead meanwhile, take a new worker
        id, re-own the tasks still running here, and call ``on_fenced``.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        wid = self._wid
        worker, fenced, tasks, cancels, _ = self._worker_keys(wid)
        counts = dict(self._counts)
        args: list[str | int] = [
            math.ceil(self._lease * 1000),
            self._safety_ms,
            self._host,
            self._pid,
            self._started,
        ]
        for state, count in counts.items():
            args += (f"n:{state}", count)

        async def beat() -> list[Any]:
            reply = await self._client.evalsha(
                scripts.HEARTBEAT.sha, [worker, fenced, tasks, cancels], args
            )
            return _array(reply)

        reply = await self._call(beat)
        if int(reply[0]) == 0:
            await self._fenced(wid)
            return
        deadline, server_now = float(reply[0]), float(reply[1])
        self._server_clock = (server_now, time.monotonic())
        self._counts_sent = counts
        # Our registration is gone, so Redis lost its data (a restart without
        # persistence): write every task still known here whole again.
        if int(reply[2]) and sum(self._recreate(tid) for tid in list(self._known)):
            self._wake_writer()
        if self._closed:
            return  # a beat that raced close(): stay unregistered

        async def register() -> None:
            await self._client.zadd(self._workers_key, {wid: deadline})

        await self._call(register)
        self._reached()
        for task_id in reply[3:]:
            self._notify(self._on_cancel, str(task_id))
        await self._index_finished({})
        if self._fence_report:
            await self._flush(progress=False)
            self._fence_report = False
            interrupted = sorted(self._rejected)
            self._rejected.clear()
            self._notify(self._on_fenced, interrupted)

    async def _fenced(self, old: str) -> None:
        self._wid = self._new_wid()
        logger.warning(
            "bgtasks worker %s was declared dead while unreachable; its unfinished "
            "tasks were reported interrupted. Continuing as worker %s",
            old,
            self._wid,
        )
        if self._control_scope is not None:
            self._control_scope.cancel()  # resubscribe on the new worker's channel
        # Re-own every task still running here; the reaped ones answer "fenced".
        for tid, gen in self._active.items():
            if tid not in self._dirty:
                entry = self._progress.pop(tid, None)
                self._dirty[tid] = entry or _Pending(gen, False, {})
        self._fence_report = True  # on_fenced, once those writes went through
        await self.heartbeat()

    @staticmethod
    def _notify(callback: Callable[[T], object], argument: T) -> None:
        try:
            callback(argument)
        except Exception:  # the manager's bug must not stop the mirroring
            logger.exception("bgtasks: a TaskMirror callback failed")

    async def reap(self) -> list[str]:
        """Declare dead the workers whose lease lapsed; report their tasks interrupted.

        Waits ``reap_grace`` after this worker (re)gained contact with Redis,
        so that after an outage every live worker renews its lease before
        anyone judges it. Returns the ids of the workers reaped here.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        if (
            self._server_clock is None
            or self._contact_since is None
            or time.monotonic() - self._contact_since < self._reap_grace
        ):
            return []
        server_now, at = self._server_clock
        now_ms = server_now + (time.monotonic() - at) * 1000.0

        async def due() -> tuple[Any, ...]:
            return await self._client.zrange(
                self._workers_key,
                "-inf",
                repr(now_ms),
                sortby=PureToken.BYSCORE,
                offset=0,
                count=_REAP_SCAN,
            )

        reaped: list[str] = []
        for dead in await self._call(due):
            if isinstance(dead, str) and dead != self._wid:  # noqa: SIM102  # awaits
                if await self._reap_worker(dead):
                    reaped.append(dead)  # one await per worker
        return reaped

    async def _reap_worker(self, dead: str) -> bool:
        worker, fenced, tasks, cancels, reaping = self._worker_keys(dead)
        lock_ms = math.ceil(max(self._lease, 10 * self._timeout) * 1000)

        async def claim() -> list[Any]:
            reply = await self._client.evalsha(
                scripts.CLAIM_REAP.sha,
                [worker, fenced, tasks, reaping],
                [self._wid, lock_ms, self._safety_ms],
            )
            return _array(reply)

        async def forget() -> None:
            await self._client.zrem(self._workers_key, [dead])

        reply = await self._call(claim)
        if reply[0] == "done":
            await self._call(forget)
        if reply[0] != "reap":
            return False
        ids: list[str] = [str(tid) for tid in reply[1:]]
        finished = time.time()
        calls = [[self._task_key(tid) for tid in chunk] for chunk in self._chunks(ids)]

        async def interrupt() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                replies = [
                    pipe.evalsha(
                        scripts.INTERRUPT_TASKS.sha,
                        keys,
                        [dead, self._ttl_ms, repr(finished)],
                    )
                    for keys in calls
                ]
            return [await reply for reply in replies]

        interrupted: list[str] = []
        offset = 0
        for keys, indexes in zip(calls, await self._call(interrupt), strict=True):
            interrupted += [ids[offset + int(i) - 1] for i in indexes]
            offset += len(keys)
        await self._index_finished(
            dict.fromkeys(interrupted, (_ms(finished), "interrupted", -1.0))
        )

        async def finish() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.evalsha(
                    scripts.FINISH_REAP.sha,
                    [worker, tasks, cancels, reaping],
                    [self._safety_ms],
                )
                pipe.zrem(self._workers_key, [dead])

        await self._call(finish)
        logger.warning(
            "bgtasks worker %s stopped heartbeating; %d of its tasks were reported "
            "interrupted",
            dead,
            len(interrupted),
        )
        return True

    async def close(self) -> None:
        """Write what is waiting, stop the loop and unregister this worker.

        A worker with tasks still active here stays registered, so its lease
        lapses and those tasks are reported interrupted rather than running
        forever. Never raises on Redis failures: they are logged.
        """
        if self._closed:
            return
        self._closed = True
        with anyio.CancelScope(shield=True):
            # Stop the loop between writes, not during one: a cancelled write
            # is put back and sent again whole, though Redis may have applied
            # it (at the end of a burst, that doubled the shutdown's writes).
            # A write in flight ends within the timeout.
            async with self._flush_lock:
                if self._run_scope is not None:
                    self._run_scope.cancel()
            try:
                await self._flush(progress=True)
            except BackendUnavailableError as exc:
                logger.warning(
                    "bgtasks could not write %d task states to Redis at shutdown (%s)",
                    len(self._dirty) + len(self._progress),
                    type(exc.__cause__ or exc).__name__,
                )
                return
            if self._watched:  # the drained tasks' ends, to watching dashboards
                with contextlib.suppress(BackendUnavailableError):
                    await self._publish()
            if self._active:
                return
            worker, _, tasks, cancels, _ = self._worker_keys(self._wid)

            async def unregister() -> None:
                async with self._client.pipeline(transaction=False) as pipe:
                    pipe.delete([worker, tasks, cancels])
                    pipe.zrem(self._workers_key, [self._wid])

            try:
                await self._call(unregister)
            except BackendUnavailableError as exc:
                logger.warning(
                    "bgtasks could not unregister worker %s (%s); its lease lapses",
                    self._wid,
                    type(exc.__cause__ or exc).__name__,
                )

    # -- reads -------------------------------------------------------------------

    async def get(self, task_id: str) -> dict[str, str] | None:
        """Return a task's fields as Redis holds them, or None if unknown.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        key = self._task_key(task_id)

        async def read() -> dict[str, str]:
            return await self._client.hgetall(key)

        return (await self._call(read)) or None

    async def _scan(
        self, after: tuple[float, str] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` index entries strictly after ``after``, newest first."""
        bound = "" if after is None else repr(float(after[0]))

        async def read() -> list[Any]:
            reply = await self._client.evalsha(
                scripts.SCAN_INDEX.sha, [self._index_key], [bound, count]
            )
            return _array(reply)

        ties, older = await self._call(read)
        entries: list[tuple[str, float]] = []
        if after is not None:
            # Python orders str by code point, as Redis orders UTF-8 by byte.
            bound_score, bound_id = after
            entries += [
                (ties[i], bound_score)
                for i in range(0, len(ties), 2)
                if ties[i] < bound_id
            ]
        entries += [(older[i], float(older[i + 1])) for i in range(0, len(older), 2)]
        return entries[:count]

    async def _read_many(self, ids: Sequence[str]) -> list[dict[str, str]]:
        async def read() -> list[dict[str, str]]:
            async with self._client.pipeline(transaction=False) as pipe:
                replies = [pipe.hgetall(self._task_key(tid)) for tid in ids]
            return [await reply for reply in replies]

        return await self._call(read)

    async def _drop_stale(self, ids: Sequence[str]) -> None:
        """Forget index entries whose record expired; best effort."""

        async def drop() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                for key in self._indexes:
                    pipe.zrem(key, ids)

        with contextlib.suppress(BackendUnavailableError):  # the next reader does
            await self._call(drop)

    async def stats(self) -> dict[str, Any]:
        """Count every worker's tasks per state; time the finished ones' runs.

        Returns ``{"counts": {state: n}, "p50": s | None, "p95": s | None}``
        over what Redis keeps: the finished tasks of every worker (bounded
        by ``max_finished`` and ``finished_ttl``) and the active tasks of
        every registered worker, as each last wrote them. Three round trips
        at most, whatever the history's size.

        Raises:
            BackendUnavailableError: Redis failed.
        """

        async def finished() -> tuple[list[Any], list[str]]:
            async with self._client.pipeline(transaction=False) as pipe:
                counted = pipe.evalsha(scripts.COUNT_TASKS.sha, self._indexes[2:], [])
                workers = pipe.zrange(self._workers_key, 0, _MAX_WORKERS - 1)
            return _array(await counted), [str(w) for w in await workers]

        reply, workers = await self._call(finished)
        names = [f"n:{state}" for state in _ACTIVE_STATES]

        async def active() -> list[Any]:
            async with self._client.pipeline(transaction=False) as pipe:
                replies = [
                    pipe.hmget(self._worker_keys(wid)[0], names) for wid in workers
                ]
            return [await reply for reply in replies]

        counts: dict[str, int] = dict.fromkeys(_ACTIVE_STATES, 0)
        for row in await self._call(active) if workers else []:
            for state, value in zip(_ACTIVE_STATES, row, strict=True):
                if isinstance(value, str) and value.isdigit():
                    counts[state] += int(value)
        for state, value in zip(_FINAL_STATES, reply, strict=False):
            counts[state] = int(value)
        durations = reply[len(_FINAL_STATES) + 1 :]
        return {
            "counts": counts,
            "p50": float(durations[0]) if durations else None,
            "p95": float(durations[1]) if durations else None,
        }

    async def changes(self, after: str | None, limit: int = 1000) -> Changes:
        """Read which tasks other workers wrote since ``after``, and those tasks.

        Call it from ``after=None`` (which only marks the position: from now
        on), then with the returned ``position``. Each call also marks the
        feed watched for a few seconds, which is what makes workers publish.
        More than ``limit`` changed tasks, or entries trimmed unread, come
        back as a ``gap`` with no tasks.

        Raises:
            BackendUnavailableError: Redis failed.
        """
        args: list[str | int] = [_WATCH_MS, _FEED_ENTRIES, after or "", _FEED_ENTRIES]

        async def read() -> list[Any]:
            reply = await self._client.evalsha(
                scripts.READ_CHANGES.sha, self._feed_keys, args
            )
            return _array(reply)

        reply = await self._call(read)
        position, gap = str(reply[0]), bool(int(reply[1]))
        ids: dict[str, None] = {}
        for i in range(2, len(reply) - 1, 2):
            if reply[i] == self._wid:
                continue  # this worker's own changes reach its dashboard directly
            try:
                found = json.loads(reply[i + 1])
            except ValueError:
                found = None
            if not isinstance(found, list):
                gap = True
                continue
            ids.update((str(tid), None) for tid in found)  # pyright: ignore[reportUnknownVariableType, reportUnknownArgumentType]
        if gap or len(ids) > limit:
            return Changes([], position, True)
        rows = [row for row in await self._read_many(list(ids)) if row] if ids else []
        return Changes(rows, position, False)

    async def request_cancel(self, task_id: str) -> CancelRequest:
        """Ask the worker running ``task_id`` to cancel it, wherever it runs.

        The request is durable (a flag the worker reads at each heartbeat)
        and fast (a pub/sub message to that worker).

        Raises:
            BackendUnavailableError: Redis failed.
        """
        key = self._task_key(task_id)

        async def ask() -> list[Any]:
            reply = await self._client.evalsha(scripts.REQUEST_CANCEL.sha, [key], [])
            return _array(reply)

        reply = await self._call(ask)
        if reply[0] == "unknown":
            return CancelRequest("unknown", None)
        if reply[0] != "requested":
            return CancelRequest("finished", None)
        worker = str(reply[1])
        cancels = self._worker_keys(worker)[3]

        async def tell() -> None:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.sadd(cancels, [task_id])
                pipe.pexpire(cancels, int(self._safety_ms))
                pipe.publish(self._channel(worker), task_id)

        await self._call(tell)
        return CancelRequest("requested", worker)

    async def list(
        self,
        *,
        state: str | None = None,
        limit: int = 50,
        cursor: tuple[float, str] | None = None,
    ) -> tuple[list[dict[str, str]], tuple[float, str] | None]:
        """Return a page of tasks, newest first, and the cursor of the next page.

        ``cursor`` is what the previous page returned (created ms and id of
        the last entry examined), so pages neither repeat nor skip tasks while
        others are added or trimmed. With a ``state`` filter a page may come
        back short (at most ``max(4 * limit, 256)`` entries are examined per
        call); the next cursor is None once the index is exhausted.

        Raises:
            ValueError: ``limit`` is not an int >= 1.
            BackendUnavailableError: Redis failed.
        """
        if isinstance(limit, bool) or limit < 1:
            raise ValueError(f"TaskMirror.list(limit={limit!r}) takes an int >= 1.")
        budget = max(4 * limit, 256)
        page: list[dict[str, str]] = []
        stale: list[str] = []
        position = cursor
        while budget > 0:
            want = min(budget, limit - len(page) if state is None else max(limit, 64))
            entries = await self._scan(position, want)
            if not entries:
                position = None
                break
            hashes = await self._read_many([tid for tid, _ in entries])
            for (tid, score), fields in zip(entries, hashes, strict=True):
                budget -= 1
                position = (score, tid)
                if not fields:
                    stale.append(tid)
                elif state is None or fields.get("state") == state:
                    page.append(fields)
                    if len(page) == limit:
                        break
            if len(page) == limit:
                break
            if len(entries) < want:
                position = None
                break
        if stale:
            await self._drop_stale(stale)
        return page, position
