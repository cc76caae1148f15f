"""The manager's bounded record store: O(1) lookup, retention by count and age.

Records live in one dict by id, in submission order: an active task's
``TaskRecord``, replaced in place by its ``Finished`` tuple when it ends (see
records.py: the collector need not walk what retention keeps). Finished records are also
queued in finish order, so the oldest finished one is always at the front and
retention drops it in O(1): finishing a task and reading the store both prune,
so the store never holds more than ``max_finished`` finished records (plus the
active ones) and none older than ``finished_ttl`` when read. Between reads,
finishing drops records over the count in batches of ``max_finished // 16``,
so a task's end rarely pays for a pruning pass. The clock reading at each
finish sits beside the queue in an array of doubles: 8 bytes per record, where
a float object on the record would take 32.

For paging, the entries are also kept in a list in submission order beside an
array of sequence numbers (8 bytes each, no int object per record): a cursor
holds a sequence number, so the next page starts by bisection wherever the
tasks in between went, and a record that ends is found there by bisection to
be replaced by its tuple. Entries dropped from the dict (or replaced under a
reused id) stay in that list until they are more than an eighth of it, then it
is rebuilt (amortized O(1)).
"""

from __future__ import annotations

import base64
import itertools
import os
import re
import threading
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable

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

# Ids replaced by reuse leave stale entries in the finish queue; rebuild the
# queue once they outnumber the live ones by this much (amortized O(1)).
_STALE_SLACK = 64

# Finish times already dropped from the front of their array are cut off in
# one go once there are this many and they are at least half of it.
_TIMES_SLACK = 1024

# Records dropped from the dict but still in the paging order: rebuild the
# order once they are more than 1/8 of the live records plus this slack.
_ORDER_SLACK = 64


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


class Registry:
    """Records by id, with retention; every method expects ``lock`` held."""

    __slots__ = (
        "_finished",
        "_finished_at",
        "_finished_count",
        "_first_time",
        "_order",
        "_order_stale",
        "_records",
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
        self._records: dict[str, Entry] = {}
        self._finished: deque[Finished] = deque()
        # _finished_at[_first_time + i]: the clock when _finished[i] ended.
        self._finished_at = array("d")
        self._first_time = 0
        self._finished_count = 0
        self._spare_ids: list[str] = []
        # _seqs[i]: the sequence number of _order[i]; both in submission order.
        self._order: list[Entry] = []
        self._seqs = array("q")
        self._sequence = itertools.count()
        self._order_stale = 0
        # Tells this registry's cursors from another's (another process, a restart).
        self.epoch = _random_ids(1)[0][:8]

    def __len__(self) -> int:
        return len(self._records)

    def add_with_new_id(self, record: TaskRecord) -> None:
        """Give ``record`` a random, unguessable id that no record uses; store it.

        22 URL-safe base64 characters from ``os.urandom`` (132 bits, as long
        as ``secrets.token_urlsafe(16)``), made a batch at a time.
        """
        records = self._records
        while True:
            spare = self._spare_ids
            if not spare:
                spare = self._spare_ids = _random_ids(_ID_BATCH)
            task_id = spare.pop()
            if task_id not in records:  # pragma: no branch - 2**-128 odds
                break
        record.id = task_id
        records[task_id] = record
        self._order.append(record)
        seq = record.seq = next(self._sequence)
        self._seqs.append(seq)

    def add(self, record: TaskRecord) -> None:
        """Store ``record``; a finished record with the same id is replaced.

        Raises:
            TaskAlreadyExistsError: a task with this id is still active.
        """
        old = self._records.get(record.id)
        if old is not None:
            if isinstance(old, TaskRecord):  # stored, not finished: active
                raise TaskAlreadyExistsError(
                    f"task id {record.id!r} belongs to a task that is still "
                    f"{old.state.value}; wait for it or cancel it first, or use "
                    "another id."
                )
            # Delete first so the new record sits at the end (newest).
            del self._records[record.id]
            self._finished_count -= 1
            self._order_stale += 1
            if len(self._finished) > 2 * self._finished_count + _STALE_SLACK:
                self._drop_stale()
            if self._order_stale > (len(self._records) >> 3) + _ORDER_SLACK:
                self._compact_order()
        self._records[record.id] = record
        self._order.append(record)
        seq = record.seq = next(self._sequence)
        self._seqs.append(seq)

    def _drop_stale(self) -> None:
        """Rebuild the finish queue without the records replaced by reused ids."""
        records = self._records
        times = self._finished_at
        first = self._first_time
        kept = [
            (entry, times[first + i])
            for i, entry in enumerate(self._finished)
            if records.get(entry[ID]) is entry
        ]
        self._finished = deque(entry for entry, _ in kept)
        self._finished_at = array("d", (at for _, at in kept))
        self._first_time = 0

    def get(self, task_id: str) -> Entry | None:
        """Return the record (or finished tuple) for ``task_id`` after pruning."""
        self.prune()
        return self._records.get(task_id)

    def is_stored(self, record: TaskRecord) -> bool:
        """Tell whether ``record`` (or its finished tuple) is stored under its id."""
        self.prune()
        entry = self._records.get(record.id)
        if entry is None or entry is record:
            return entry is not None
        # A tuple: this record's if it took the record's place in the order.
        at = bisect_left(self._seqs, record.seq)
        return at < len(self._order) and self._order[at] is entry

    def finished(self, record: TaskRecord, now: float) -> None:
        """Store a record that just ended at clock time ``now`` as its tuple, prune."""
        entry = record.entry()
        records = self._records
        if records.get(record.id) is record:  # pragma: no branch - always stored
            records[record.id] = entry  # same key: keeps its place in the dict
            at = bisect_left(self._seqs, record.seq)
            self._order[at] = entry  # active records are never compacted away
        self._finished.append(entry)
        times = self._finished_at
        times.append(now)
        self._finished_count += 1
        ttl = self.ttl
        # Runs once per task: call prune() only when a batch is due.
        if self._finished_count > self.prune_above or (
            ttl is not None and times[self._first_time] <= now - ttl
        ):
            self.prune(now)

    def prune(self, now: float | None = None) -> None:
        """Drop finished records beyond the count limit or older than the TTL."""
        queue = self._finished
        if not queue:
            return
        records = self._records
        times = self._finished_at
        first = self._first_time
        ttl = self.ttl
        cutoff = None if ttl is None else (self.clock() if now is None else now) - ttl
        while queue:
            oldest = queue[0]
            if records.get(oldest[ID]) is not oldest:
                pass  # replaced by a reused id: already counted out
            elif self._finished_count > self.max_finished or (
                cutoff is not None and times[first] <= cutoff
            ):
                del records[oldest[ID]]
                self._finished_count -= 1
                self._order_stale += 1
            else:
                break
            queue.popleft()
            first += 1
        if not queue or (first >= _TIMES_SLACK and 2 * first >= len(times)):
            del times[:first]
            first = 0
        self._first_time = first
        if self._order_stale > (len(records) >> 3) + _ORDER_SLACK:
            self._compact_order()

    def _compact_order(self) -> None:
        """Rebuild the paging order without the entries dropped from the dict."""
        records = self._records
        order = self._order
        seqs = self._seqs
        # Retention drops the oldest first: usually the dropped ones are a
        # prefix, cut in one go; only what follows is checked one by one.
        start = 0
        while start < len(order) and not _is_stored(records, order[start]):
            start += 1
        stale = self._order_stale - start
        if stale > 0:
            keep = [_is_stored(records, entry) for entry in order[start:]]
            self._order = list(itertools.compress(order[start:], keep))
            self._seqs = array("q", itertools.compress(seqs[start:], keep))
        else:
            del order[:start]
            del seqs[:start]
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
        records = self._records
        order = self._order
        seqs = self._seqs
        found: list[Entry] = []
        at = len(order) if before is None else bisect_left(seqs, before)
        last = at
        while at:
            at -= 1
            entry = order[at]
            if not _is_stored(records, entry):
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
        # Active records are never pruned, so they are all in the dict.
        return [r for r in self._records.values() if isinstance(r, TaskRecord)]

    def count(self, state: TaskState) -> int:
        """Count the stored records in ``state`` (O(n); for tests and stats)."""
        return sum(1 for r in self._records.values() if _state_of(r) is state)


def _is_stored(records: dict[str, Entry], entry: Entry) -> bool:
    task_id = entry[ID] if isinstance(entry, tuple) else entry.id
    return records.get(task_id) is entry


def _state_of(entry: Entry) -> TaskState:
    return entry.state if isinstance(entry, TaskRecord) else TaskState(entry[STATE])
