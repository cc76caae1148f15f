"""The manager's bounded record store: O(1) lookup, retention by count and age.

Active tasks' ``TaskRecord``s live in one dict by id: few, and tracked by
CPython's collector whatever holds them. A task that ends leaves that dict
for the finish queue as its ``Finished`` tuple (see records.py), and its id
maps to the tuple's position in that queue in a second dict. Retention can keep
a million finished records, so nothing that holds them may cost the collector
a reference per record on every full collection: a dict of str keys and int
values is untracked (the collector never visits it; each position is an int
object of 32 bytes, the price of that), and the queue holds its
entries in frozen tuples of 1,024 (_CHUNK), which CPython untracks once it sees
their entries are untracked. A full collection then follows about one
reference per 1,024 records, plus at most two lists of 1,024 per queue: the
chunk being filled and the one retention is dropping from.

The queue is in finish order, so the oldest finished record is always at its
front and retention drops it by advancing the front: finishing a task and
reading the store both prune, so the store never holds more than
``max_finished`` finished records (plus the active ones) and none older than
``finished_ttl`` when read. Between reads, finishing drops records over the
count in batches of ``max_finished // 16``, so a task's end rarely pays for a
pruning pass. A dropped entry is replaced at once by a placeholder (the chunk
at the front is thawed into a list for that), so its result is freed with it,
and whole chunks are released as the front passes them. An id reused by a
new task leaves its finished entry in the queue, dead (its position is no
longer the id's), until the queue is rebuilt without the dead ones once they
outnumber the live ones. The clock reading and the sequence number of each
finished entry sit beside the queue in arrays: 8 bytes each per record, where
an int or float object would take 32.

For paging, ids are also kept in submission order, in chunks as well, beside
an array of sequence numbers: a cursor holds a sequence number, so the next
page starts by bisection wherever the tasks in between went, and an id's slot
is current while the record stored under that id has the slot's sequence
number. Slots of dropped or replaced records stay until they are more than an
eighth of the store, then the order is rebuilt (amortized O(1)).
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from ..exceptions import TaskAlreadyExistsError
from .records import ID, STATE, Entry, Finished, TaskRecord, TaskState

__all__ = ["TASK_ID_PATTERN", "Registry", "check_task_id"]

# Ids go into URL paths: the HTTP layer accepts exactly these.
TASK_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")

# Random ids: 22 URL-safe base64 characters (132 random bits, the length of
# secrets.token_urlsafe(16)), cut from one encoding of 256 ids' worth of bytes.
_ID_CHARS = 22
_ID_BYTES = 18  # encode to 24 characters: no padding, no id straddles two
_ID_STRIDE = 24
_ID_BATCH = 256

# Entries per frozen chunk: a full collection follows one reference per chunk
# instead of one per record. A power of two, so a position splits by shifts.
_CHUNK_BITS = 10
_CHUNK = 1 << _CHUNK_BITS
_IN_CHUNK = _CHUNK - 1

# Ids replaced by reuse leave dead entries in the finish queue; rebuild the
# queue once they outnumber the live ones by this much (amortized O(1)).
_STALE_SLACK = 64

# Finish times already dropped from the front of their array are cut off in
# one go once there are this many and they are at least half of it.
_TIMES_SLACK = 1024

# Records dropped from the store but still in the paging order: rebuild the
# order once they are more than 1/8 of the stored records plus this slack.
_ORDER_SLACK = 64

# What a dropped slot of the finish queue holds instead of its entry, so the
# entry (and the task's result) is freed at once, not when its chunk goes.
_GONE: Finished = ("", "", "", 0.0, None, None, None, None, None, None, 0, False, None)

_T = TypeVar("_T")


def _random_ids(count: int) -> list[str]:
    text = base64.urlsafe_b64encode(os.urandom(_ID_BYTES * count)).decode("ascii")
    return [text[at : at + _ID_CHARS] for at in range(0, len(text), _ID_STRIDE)]


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a valid caller-given id.

    Raises:
        ValueError: not 1 to 128 characters of ``A-Z a-z 0-9 _ -``.
    """
    if not isinstance(task_id, str) or TASK_ID_PATTERN.fullmatch(task_id) is None:
        raise ValueError(
            f"_task_id must be 1 to 128 characters from A-Z, a-z, 0-9, '_' and '-' "
            f"(it ends up in URLs), got {task_id!r}. Pass such a string, or omit "
            "_task_id for a random id."
        )
    return task_id


class _Chunks(Generic[_T]):
    """A queue of items at positions ``start`` to ``end``, in chunks of 1,024.

    Positions only grow, so a position stays an item's while it is queued.
    Item ``pos`` is at ``pos & 1023`` in chunk ``(pos >> 10) - base``: one of
    ``frozen`` (full chunks, tuples, but the front one once items were dropped
    from it) or else ``open``, the list being filled. The front chunk is always
    the first: dropping items releases the chunks left behind.
    """

    __slots__ = ("base", "end", "frozen", "gone", "open", "start")

    def __init__(self, gone: _T) -> None:
        self.frozen: list[Sequence[_T]] = []
        self.open: list[_T] = []
        self.base = 0
        self.start = 0
        self.end = 0
        self.gone = gone

    def __len__(self) -> int:
        return self.end - self.start

    def push(self, item: _T) -> None:
        """Queue ``item`` at position ``end``."""
        filling = self.open
        filling.append(item)
        self.end += 1
        if len(filling) == _CHUNK:
            self.frozen.append(tuple(filling))
            filling.clear()

    def __getitem__(self, pos: int) -> _T:
        frozen = self.frozen
        at = (pos >> _CHUNK_BITS) - self.base
        return (frozen[at] if at < len(frozen) else self.open)[pos & _IN_CHUNK]

    def __iter__(self) -> Iterator[_T]:
        """Yield the queued items, oldest first."""
        chunks = itertools.chain(self.frozen, (self.open,))
        front = next(chunks)
        for at in range(self.start & _IN_CHUNK, len(front)):
            yield front[at]
        for chunk in chunks:
            yield from chunk

    def newest_first(self, end: int) -> Iterator[_T]:
        """Yield the queued items before position ``end``, newest first."""
        frozen = self.frozen
        start = self.start
        while end > start:
            last = end - 1
            at = (last >> _CHUNK_BITS) - self.base
            chunk = frozen[at] if at < len(frozen) else self.open
            end = max(start, last & ~_IN_CHUNK)
            for at in range(last & _IN_CHUNK, (end & _IN_CHUNK) - 1, -1):
                yield chunk[at]

    def drop_to(self, start: int) -> None:
        """Drop the items before position ``start``."""
        frozen = self.frozen
        gone_from = self.start
        self.start = start
        passed = (start >> _CHUNK_BITS) - self.base
        if passed:
            del frozen[:passed]
            self.base += passed
            gone_from = max(gone_from, start & ~_IN_CHUNK)
        if gone_from < start:
            front = frozen[0] if frozen else self.open
            if not isinstance(front, list):
                # Thawed once per chunk: its remaining items stay, the
                # dropped ones are freed now rather than with the chunk.
                front = list(front)
                frozen[0] = front
            front[gone_from & _IN_CHUNK : start & _IN_CHUNK] = [self.gone] * (
                start - gone_from
            )


class Registry:
    """Records by id, with retention; every method expects ``lock`` held."""

    __slots__ = (
        "_active",
        "_finished",
        "_finished_at",
        "_finished_seqs",
        "_first_time",
        "_order",
        "_order_stale",
        "_positions",
        "_seqs",
        "_sequence",
        "_spare_ids",
        "clock",
        "epoch",
        "lock",
        "max_finished",
        "prune_above",
        "ttl",
    )

    def __init__(
        self, *, max_finished: int, ttl: float | None, clock: Callable[[], float]
    ) -> None:
        self.lock = threading.Lock()
        self.max_finished = max_finished
        self.prune_above = max_finished + max_finished // 16
        self.ttl = ttl
        self.clock = clock
        self._active: dict[str, TaskRecord] = {}
        # A finished id -> its entry's position in _finished.
        self._positions: dict[str, int] = {}
        self._finished: _Chunks[Finished] = _Chunks(_GONE)
        # _finished_at[_first_time + i], _finished_seqs[_first_time + i]: the
        # clock when the entry at position _finished.start + i ended, and its
        # record's sequence number.
        self._finished_at = array("d")
        self._finished_seqs = array("q")
        self._first_time = 0
        self._spare_ids: list[str] = []
        # _seqs[i]: the sequence number of the id at position _order.start + i.
        self._order: _Chunks[str] = _Chunks("")
        self._seqs = array("q")
        self._sequence = itertools.count()
        self._order_stale = 0
        # Tells this registry's cursors from another's (another process, a restart).
        self.epoch = _random_ids(1)[0][:8]

    def __len__(self) -> int:
        return len(self._active) + len(self._positions)

    def add_with_new_id(self, record: TaskRecord) -> None:
        """Give ``record`` a random, unguessable id that no record uses; store it.

        22 URL-safe base64 characters from ``os.urandom`` (132 bits, as long
        as ``secrets.token_urlsafe(16)``), made a batch at a time.
        """
        active = self._active
        positions = self._positions
        while True:
            spare = self._spare_ids
            if not spare:
                spare = self._spare_ids = _random_ids(_ID_BATCH)
            task_id = spare.pop()
            if task_id in active or task_id in positions:  # pragma: no cover
                continue  # 2**-128 odds
            break
        record.id = task_id
        active[task_id] = record
        self._order.push(task_id)
        seq = record.seq = next(self._sequence)
        self._seqs.append(seq)

    def add(self, record: TaskRecord) -> None:
        """Store ``record``; a finished record with the same id is replaced.

        Raises:
            TaskAlreadyExistsError: a task with this id is still active.
        """
        task_id = record.id
        old = self._active.get(task_id)
        if old is not None:
            raise TaskAlreadyExistsError(
                f"task id {task_id!r} belongs to a task that is still "
                f"{old.state.value}; wait for it or cancel it first, or use "
                "another id."
            )
        positions = self._positions
        if positions.pop(task_id, None) is not None:
            # Its entry stays in the finish queue and its id in the paging
            # order, both dead: neither is the id's any more.
            self._order_stale += 1
            if len(self._finished) > 2 * len(positions) + _STALE_SLACK:
                self._drop_stale()
            if self._order_stale > (len(self) >> 3) + _ORDER_SLACK:
                self._compact_order()
        self._active[task_id] = record
        self._order.push(task_id)
        seq = record.seq = next(self._sequence)
        self._seqs.append(seq)

    def _drop_stale(self) -> None:
        """Rebuild the finish queue without the entries of reused ids."""
        positions = self._positions
        finished = self._finished
        start = finished.start
        first = self._first_time
        live = [
            positions.get(entry[ID]) == start + i for i, entry in enumerate(finished)
        ]
        rebuilt: _Chunks[Finished] = _Chunks(_GONE)
        for entry in itertools.compress(finished, live):
            positions[entry[ID]] = rebuilt.end
            rebuilt.push(entry)
        self._finished = rebuilt
        self._finished_at = array(
            "d", itertools.compress(self._finished_at[first:], live)
        )
        self._finished_seqs = array(
            "q", itertools.compress(self._finished_seqs[first:], live)
        )
        self._first_time = 0

    def _current(self, task_id: str, seq: int) -> Entry | None:
        """Return what is stored under ``task_id`` if its sequence number is ``seq``."""
        record = self._active.get(task_id)
        if record is not None:
            return record if record.seq == seq else None
        pos = self._positions.get(task_id)
        if pos is None:
            return None
        finished = self._finished
        at = self._first_time + pos - finished.start
        return finished[pos] if self._finished_seqs[at] == seq else None

    def get(self, task_id: str) -> Entry | None:
        """Return the record (or finished tuple) for ``task_id`` after pruning."""
        self.prune()
        record = self._active.get(task_id)
        if record is not None:
            return record
        pos = self._positions.get(task_id)
        return None if pos is None else self._finished[pos]

    def is_stored(self, record: TaskRecord) -> bool:
        """Tell whether ``record`` (or its finished tuple) is stored under its id."""
        self.prune()
        return self._current(record.id, record.seq) is not None

    def finished(self, record: TaskRecord, now: float) -> None:
        """Store a record that just ended at clock time ``now`` as its tuple, prune."""
        task_id = record.id
        active = self._active
        if active.get(task_id) is not record:  # pragma: no cover - always stored
            return
        del active[task_id]
        positions = self._positions
        finished = self._finished
        positions[task_id] = finished.end
        finished.push(record.entry())
        times = self._finished_at
        times.append(now)
        self._finished_seqs.append(record.seq)
        ttl = self.ttl
        # Runs once per task: call prune() only when a batch is due.
        if len(positions) > self.prune_above or (
            ttl is not None and times[self._first_time] <= now - ttl
        ):
            self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Drop finished records beyond the count limit or older than the TTL."""
        finished = self._finished
        pos = finished.start
        if pos == finished.end:
            return
        positions = self._positions
        times = self._finished_at
        first = self._first_time
        ttl = self.ttl
        cutoff = None if ttl is None else (self.clock() if now is None else now) - ttl
        over = len(positions) - self.max_finished
        dropped = 0
        for entry in finished:
            task_id = entry[ID]
            if positions.get(task_id) != pos:
                pass  # replaced by a reused id: already counted out
            elif over > 0 or (cutoff is not None and times[first] <= cutoff):
                del positions[task_id]
                over -= 1
                dropped += 1
            else:
                break
            pos += 1
            first += 1
        finished.drop_to(pos)
        if pos == finished.end or (first >= _TIMES_SLACK and 2 * first >= len(times)):
            del times[:first]
            del self._finished_seqs[:first]
            first = 0
        self._first_time = first
        self._order_stale += dropped
        if self._order_stale > (len(self) >> 3) + _ORDER_SLACK:
            self._compact_order()

    def _compact_order(self) -> None:
        """Rebuild the paging order without the slots of dropped records."""
        order = self._order
        seqs = self._seqs
        current = self._current
        # Retention drops the oldest first: usually the dropped ones are a
        # prefix, cut in one go; only what follows is checked one by one.
        dead = 0
        for task_id, seq in zip(order, seqs, strict=True):
            if current(task_id, seq) is not None:
                break
            dead += 1
        order.drop_to(order.start + dead)
        del seqs[:dead]
        if self._order_stale > dead:
            live = [
                current(task_id, seq) is not None
                for task_id, seq in zip(order, seqs, strict=True)
            ]
            rebuilt: _Chunks[str] = _Chunks("")
            for task_id in itertools.compress(order, live):
                rebuilt.push(task_id)
            self._order = rebuilt
            self._seqs = array("q", itertools.compress(seqs, live))
        self._order_stale = 0

    def page(
        self, state: TaskState | None, limit: int | None, before: int | None
    ) -> tuple[list[Entry], int | None]:
        """Return stored records newest first, and where the next page starts.

        Args:
            state: only records in this state.
            limit: at most this many, at least 1; None for all.
            before: only records with a lower sequence number (a cursor's).

        Returns:
            The records, and the sequence number to pass as ``before`` for
            the next page: None when no other record matches.
        """
        self.prune()
        order = self._order
        seqs = self._seqs
        current = self._current
        found: list[Entry] = []
        at = len(order) if before is None else bisect_left(seqs, before)
        last = at
        for task_id in order.newest_first(order.start + at):
            at -= 1
            entry = current(task_id, seqs[at])
            if entry is None:
                continue  # dropped, or its id reused by a newer record
            if state is not None and _state_of(entry) is not state:
                continue
            if limit is not None and len(found) == limit:
                return found, seqs[last]
            found.append(entry)
            last = at
        return found, None

    def active(self) -> list[TaskRecord]:
        """Return the records that are PENDING or RUNNING, oldest first."""
        return list(self._active.values())

    def count(self, state: TaskState) -> int:
        """Count the stored records in ``state`` (O(n); for tests and stats)."""
        finished = self._finished
        return sum(1 for r in self._active.values() if r.state is state) + sum(
            1 for pos in self._positions.values() if _state_of(finished[pos]) is state
        )


def _state_of(entry: Entry) -> TaskState:
    return entry.state if isinstance(entry, TaskRecord) else TaskState(entry[STATE])
