"""Everything the dashboard reads from, or does to, the tasks: one adapter.

The page, its JSON and its live feed go through :class:`TaskSource` only, and it
uses only the public ``TaskManager`` API (``alist``, ``aget``, ``cancel``,
``list``, ``subscribe``, ``running``, ``backend``). Pages, single tasks and
cancels use the async reads, so with a shared backend they cover every worker
(and raise ``BackendUnavailableError`` when it is down). With a backend that
offers them (``ObservableBackend``), the statistics and the other workers'
changes come from it too; the statistics fall back to this process's own
records while it cannot answer.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..._manager.backend import ObservableBackend, SharedChanges
from ..._manager.records import TaskInfo, TaskState
from ...exceptions import BackendUnavailableError

if TYPE_CHECKING:
    from ..._manager import TaskManager
    from ..._manager.events import TaskEvent

__all__ = ["CancelOutcome", "Page", "Stats", "TaskSource"]

# Statistics scan the whole retained history: several open pages share one scan.
STATS_TTL = 1.0
# After the backend failed to count, this worker's own counts serve this long,
# so a stalled Redis costs one slow read per period, not one per page load.
STATS_RETRY = 5.0


@dataclass(frozen=True, slots=True)
class Page:
    """One page of tasks, newest first, and the cursor of the next (older) page."""

    tasks: list[TaskInfo]
    next_cursor: str | None


@dataclass(frozen=True, slots=True)
class Stats:
    """Counts per state and run times over the retained history.

    ``success_rate`` is succeeded / finished-but-not-cancelled (a cancel is a
    decision, not a failure); durations are ``finished_at - started_at`` of
    the finished tasks that ran, in seconds. Each is None without data.
    """

    counts: dict[TaskState, int]
    success_rate: float | None
    duration_p50: float | None
    duration_p95: float | None
    # "all": every worker's (the backend's); "worker": this process's records.
    scope: str = "worker"
    # True when the backend could not count, so this worker's counts stand in.
    degraded: bool = False


class CancelOutcome(enum.Enum):
    """What asking to cancel a task did."""

    REQUESTED = "requested"
    NOT_FOUND = "not found"
    FINISHED = "finished"


def _cursor_of(info: TaskInfo) -> str:
    # Submission time first, so a page can resume after its last task was dropped.
    return f"{round(info.created_at.timestamp() * 1e6)}~{info.id}"


def _percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of a non-empty sorted list."""
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


class TaskSource:
    """The dashboard's view of one ``TaskManager``."""

    __slots__ = (
        "_clock",
        "_failed_at",
        "_manager",
        "_shared",
        "_shared_at",
        "_stats",
        "_stats_at",
    )

    def __init__(
        self, manager: TaskManager, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._manager = manager
        self._clock = clock
        self._stats: Stats | None = None
        self._stats_at = -math.inf
        self._shared: Stats | None = None
        self._shared_at = self._failed_at = -math.inf

    @property
    def running(self) -> bool:
        """True while the manager runs; live streams end when it stops."""
        return self._manager.running

    async def page(
        self,
        *,
        state: TaskState | None = None,
        name: str | None = None,
        id_prefix: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Return up to ``limit`` matching tasks, newest first, after ``cursor``.

        Args:
            state: only tasks in this state.
            name: only tasks whose name contains this (case-insensitive).
            id_prefix: only tasks whose id starts with this.
            limit: the page size.
            cursor: ``next_cursor`` of the previous page (opaque).
        """
        if id_prefix is not None:
            exact = await self._manager.aget(id_prefix)
            if exact is not None:  # an id pasted whole: no scan
                matches = [exact] if self._keeps(exact, state, name) else []
                return Page(matches, None)
        if name is None and id_prefix is None and cursor is None:
            # The common case, cheap: the manager stops after limit + 1.
            found: list[TaskInfo] = await self._manager.alist(
                state=state, limit=limit + 1
            )
        else:
            needle = None if name is None else name.casefold()
            found = [
                info
                for info in await self._manager.alist(state=state)
                if (needle is None or needle in info.name.casefold())
                and (id_prefix is None or info.id.startswith(id_prefix))
            ]
            if cursor is not None:
                found = found[_resume_at(found, cursor) :]
            found = found[: limit + 1]
        more = len(found) > limit
        tasks = found[:limit]
        return Page(tasks, _cursor_of(tasks[-1]) if more and tasks else None)

    @staticmethod
    def _keeps(info: TaskInfo, state: TaskState | None, name: str | None) -> bool:
        return (state is None or info.state is state) and (
            name is None or name.casefold() in info.name.casefold()
        )

    def stats(self) -> Stats:
        """Count per state, rate successes, time p50/p95 (cached briefly)."""
        now = self._clock()
        if self._stats is not None and now - self._stats_at < STATS_TTL:
            return self._stats
        counts = dict.fromkeys(TaskState, 0)
        durations: list[float] = []
        succeeded = judged = 0
        for info in self._manager.list():
            counts[info.state] = counts.get(info.state, 0) + 1
            if not info.state.is_finished:
                continue
            if info.state is TaskState.SUCCEEDED:
                succeeded += 1
            if info.state is not TaskState.CANCELLED:
                judged += 1
            if info.started_at is not None and info.finished_at is not None:
                durations.append((info.finished_at - info.started_at).total_seconds())
        durations.sort()
        self._stats = Stats(
            counts=counts,
            success_rate=succeeded / judged if judged else None,
            duration_p50=_percentile(durations, 0.5) if durations else None,
            duration_p95=_percentile(durations, 0.95) if durations else None,
        )
        self._stats_at = now
        return self._stats

    def _observable(self) -> ObservableBackend | None:
        backend: object = self._manager.backend
        if self._manager.running and isinstance(backend, ObservableBackend):
            return backend
        return None

    @property
    def shared(self) -> bool:
        """True if other workers' changes can be read (:meth:`changes`)."""
        return self._observable() is not None

    async def astats(self) -> Stats:
        """Return :meth:`stats` over every worker when the backend can count.

        Falls back to this worker's own statistics (``degraded``) while the
        backend cannot answer, and asks it again after ``STATS_RETRY``.
        """
        backend = self._observable()
        now = self._clock()
        if backend is None:
            return self.stats()
        if now - self._failed_at < STATS_RETRY:
            return replace(self.stats(), degraded=True)
        if self._shared is not None and now - self._shared_at < STATS_TTL:
            return self._shared
        try:
            found = await backend.stats()
        except (BackendUnavailableError, RuntimeError):  # down, or just stopped
            self._failed_at = self._clock()
            return replace(self.stats(), degraded=True)
        self._shared = Stats(
            counts=found.counts,
            success_rate=found.success_rate,
            duration_p50=found.duration_p50,
            duration_p95=found.duration_p95,
            scope="all",
        )
        self._shared_at = now
        return self._shared

    async def changes(self, after: str | None) -> SharedChanges | None:
        """Return other workers' changed tasks since ``after``; None without them.

        Raises:
            BackendUnavailableError: the backend cannot answer.
        """
        backend = self._observable()
        if backend is None:
            return None
        try:
            return await backend.changes(after)
        except RuntimeError:  # the manager stopped meanwhile: no more changes
            return None

    async def get(self, task_id: str) -> TaskInfo | None:
        """Return the task's snapshot, or None for an unknown (or dropped) id."""
        return await self._manager.aget(task_id)

    def active(self) -> list[TaskInfo]:
        """Return the running tasks: their progress changes without an event."""
        return self._manager.list(state=TaskState.RUNNING)

    async def cancel(self, task_id: str) -> tuple[CancelOutcome, TaskInfo | None]:
        """Ask the task to stop; return what happened and its latest snapshot."""
        info = await self._manager.aget(task_id)
        if info is None:
            return CancelOutcome.NOT_FOUND, None
        if not info.state.is_finished and await self._manager.cancel(task_id):
            return CancelOutcome.REQUESTED, await self._manager.aget(task_id) or info
        # Finished before the request, or in the race between get and cancel.
        latest = await self._manager.aget(task_id)
        if latest is None:
            return CancelOutcome.NOT_FOUND, None
        return CancelOutcome.FINISHED, latest

    def subscribe(self, callback: Callable[[TaskInfo], object]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after each state change; return the undo.

        The callback runs inline, in whichever thread made the change: it must
        be quick and thread-safe.
        """

        def on_event(event: TaskEvent) -> None:
            callback(event.info)

        return self._manager.subscribe(on_event)


def _resume_at(found: list[TaskInfo], cursor: str) -> int:
    """Index just after the cursor's task in ``found`` (newest first)."""
    micros, _, task_id = cursor.partition("~")
    for index, info in enumerate(found):
        if info.id == task_id:
            return index + 1
    # That task is gone (retention): resume at the first one submitted before it.
    before = int(micros) if micros.isascii() and micros.isdigit() else 0
    for index, info in enumerate(found):
        if round(info.created_at.timestamp() * 1e6) < before:
            return index
    return len(found)
