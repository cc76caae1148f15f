"""``max_concurrency``: run slots handed out in submission order.

``held`` counts the tasks that hold a slot; the queue keeps the others in
submission order. A freed slot goes to the oldest still-PENDING queued record at
once, so ``held < limit`` implies that no live record is queued. Every method
expects the manager's lock held, and none awaits.
"""

from __future__ import annotations

from collections import deque

import anyio

from .records import TaskRecord, TaskState

__all__ = ["SlotWaiter", "Slots"]


class SlotWaiter:
    """An ``add_task`` wrapper waiting in the queue for a slot."""

    __slots__ = ("event", "granted")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.granted = False


class Slots:
    """The slots of one manager: how many are held, who waits for one."""

    __slots__ = ("_limit", "_queue", "_waiters", "held")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self.held = 0
        self._queue: deque[TaskRecord] = deque()
        self._waiters: dict[TaskRecord, SlotWaiter] = {}

    def take(self) -> bool:
        """Take a free slot if there is one."""
        if self.held < self._limit:
            self.held += 1
            return True
        return False

    def enqueue(self, record: TaskRecord, waiter: SlotWaiter | None = None) -> None:
        """Queue ``record``; ``waiter`` is set for an ``add_task`` wrapper."""
        self._queue.append(record)
        if waiter is not None:
            self._waiters[record] = waiter

    def release(self) -> tuple[list[TaskRecord], list[anyio.Event]]:
        """Free a slot and hand free slots to the oldest PENDING queued records.

        Returns:
            The spawned records to launch, and the events of the ``add_task``
            wrappers to wake (their ``granted`` is set).
        """
        self.held -= 1
        launches: list[TaskRecord] = []
        wakes: list[anyio.Event] = []
        queue = self._queue
        while queue and self.held < self._limit:
            record = queue.popleft()
            if record.state is not TaskState.PENDING:
                continue  # cancelled while it waited
            self.held += 1
            waiter = self._waiters.pop(record, None)
            if waiter is None:
                launches.append(record)
            else:
                waiter.granted = True
                wakes.append(waiter.event)
        return launches, wakes

    def forget(self, record: TaskRecord) -> None:
        """Wake the ``add_task`` wrapper, if any, of a record that ended unrun."""
        waiter = self._waiters.pop(record, None)
        if waiter is not None:
            waiter.event.set()  # the wrapper then sees it finished and returns

    def drop_waiter(self, record: TaskRecord) -> None:
        """Forget the waiter of an ``add_task`` wrapper that stopped waiting."""
        self._waiters.pop(record, None)

    def clear(self) -> None:
        """Empty the queue (shutdown, after cancelling every PENDING record)."""
        self._queue.clear()
