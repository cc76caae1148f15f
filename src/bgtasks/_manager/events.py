"""State-change events for the TaskManager's subscribers (logging, metrics).

Sync subscribers are called inline, outside the manager's lock, right after the
change. Async subscribers are awaited by the flow that made the change (the
task's own runner, ``cancel()``, or shutdown), so each one sees a task's events
in order and a slow subscriber slows down only that task: nothing queues up.
A subscriber that raises is logged and ignored; it never breaks the task.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import anyio

from .._wrap import is_async_callable
from .records import TaskInfo, TaskState

__all__ = ["Subscriber", "Subscribers", "TaskEvent"]

logger = logging.getLogger("bgtasks")

# Deliveries that must happen while the task is being cancelled (its final
# event, shutdown) are shielded, but never for longer than this.
SHIELDED_DELIVERY_TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class TaskEvent:
    """One state change of one task, as subscribers receive it.

    Attributes:
        task_id: the task's id.
        old_state: the state before; None when the task was just submitted.
        new_state: the state after.
        info: a snapshot of the task taken right after the change.
    """

    task_id: str
    old_state: TaskState | None
    new_state: TaskState
    info: TaskInfo


Subscriber: TypeAlias = (
    Callable[[TaskEvent], object] | Callable[[TaskEvent], Awaitable[object]]
)


class Subscribers:
    """The manager's subscribers, split once by kind (copy-on-write tuples)."""

    __slots__ = ("_lock", "any", "async_", "sync")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.sync: tuple[Callable[[TaskEvent], object], ...] = ()
        self.async_: tuple[Callable[[TaskEvent], Awaitable[object]], ...] = ()
        self.any = False  # read on every state change: an attribute, not a call

    def add(self, callback: Subscriber) -> Callable[[], None]:
        """Register ``callback``; return a function that unregisters it.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(
                f"subscribe() needs a callable taking a TaskEvent, got "
                f"{type(callback).__name__} {callback!r}."
            )
        is_async = is_async_callable(callback)
        with self._lock:
            if is_async:
                self.async_ = (*self.async_, callback)  # type: ignore[arg-type]
            else:
                self.sync = (*self.sync, callback)
            self.any = True
        removed = False

        def unsubscribe() -> None:
            nonlocal removed
            with self._lock:
                if removed:
                    return
                removed = True
                if is_async:
                    self.async_ = _without(self.async_, callback)
                else:
                    self.sync = _without(self.sync, callback)
                self.any = bool(self.sync or self.async_)

        return unsubscribe

    def notify_sync(self, events: Sequence[TaskEvent]) -> None:
        """Call every sync subscriber with each event; log their failures."""
        for callback in self.sync:
            for event in events:
                try:
                    callback(event)
                except Exception:  # noqa: PERF203 - each failure is logged alone
                    _log_failure(callback, event)

    async def notify_async(
        self, events: Sequence[TaskEvent], *, shielded: bool = False
    ) -> None:
        """Await every async subscriber with each event; log their failures.

        Args:
            events: the events, oldest first.
            shielded: deliver even though the caller is being cancelled, for at
                most ``SHIELDED_DELIVERY_TIMEOUT`` seconds.
        """
        if shielded:
            with anyio.move_on_after(SHIELDED_DELIVERY_TIMEOUT, shield=True):
                await self._deliver(events)
        else:
            await self._deliver(events)

    async def announce_start(self, created: TaskInfo | None, info: TaskInfo) -> None:
        """Tell of a task that started (async subscribers also of its creation).

        Args:
            created: its PENDING snapshot, for async subscribers (None if none).
            info: its RUNNING snapshot.
        """
        running = TaskEvent(info.id, TaskState.PENDING, TaskState.RUNNING, info)
        self.notify_sync([running])
        if created is not None:
            await self.notify_async(
                [TaskEvent(info.id, None, TaskState.PENDING, created), running]
            )

    async def announce(self, events: list[TaskEvent]) -> None:
        """Deliver the events of a task that ended (shielded for async ones).

        A creation event (old state None) only goes to async subscribers: sync
        ones got it at submission.
        """
        if events:
            self.notify_sync([e for e in events if e.old_state is not None])
            if self.async_:
                await self.notify_async(events, shielded=True)

    async def _deliver(self, events: Sequence[TaskEvent]) -> None:
        for callback in self.async_:
            for event in events:
                try:
                    await callback(event)
                except Exception:  # noqa: PERF203 - each failure is logged alone
                    _log_failure(callback, event)


def _without(items: tuple[Any, ...], callback: object) -> tuple[Any, ...]:
    for index, item in enumerate(items):
        if item is callback:
            return items[:index] + items[index + 1 :]
    return items  # pragma: no cover - unsubscribe runs once per subscribe


def _log_failure(callback: object, event: TaskEvent) -> None:
    logger.exception(
        "bgtasks subscriber %s failed on task %s (%s -> %s); the task is unaffected",
        getattr(callback, "__qualname__", repr(callback)),
        event.task_id,
        event.old_state.value if event.old_state is not None else None,
        event.new_state.value,
    )
