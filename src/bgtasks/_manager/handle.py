"""``TaskHandle``: what ``spawn`` and ``add_task`` return."""

from __future__ import annotations

from typing import Generic

from .records import RecordView, T_co, TaskInfo

__all__ = ["TaskHandle"]


class TaskHandle(RecordView, Generic[T_co]):
    """What ``spawn`` and ``add_task`` return: the task's id, and shortcuts.

    Generic in the task's return type, which the type checker takes from the
    submitted function (an ``async def``'s awaited result).

    The handle follows the task it was created for, even after retention
    dropped its record from the manager (``info()`` then returns None).
    """

    __slots__ = ()

    def info(self) -> TaskInfo[T_co] | None:
        """Return a snapshot of the task, or None once retention dropped it."""
        return self._record.engine.info_of(self._record)

    async def wait(self, *, timeout: float | None = None) -> TaskInfo[T_co]:
        """Wait until the task is finished and return its final snapshot.

        Raises:
            TimeoutError: the task did not finish within ``timeout`` seconds.
        """
        record = self._record
        info = record.info  # the final snapshot, once built: nothing to wait for
        if info is not None:
            return info
        return await record.engine.wait_record(record, timeout)

    async def cancel(self) -> bool:
        """Ask the task to stop; False if it had already finished."""
        return await self._record.engine.cancel_record(self._record)
