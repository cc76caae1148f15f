"""``add_task``: tracked tasks that Starlette's ``BackgroundTasks`` runs.

Such a task runs in the request's own task, after the response, not in the
manager's task group: the wrapper handed to Starlette waits for a concurrency
slot, then runs the function in a child task of its own.
"""

from __future__ import annotations

from contextvars import Context

import anyio

from .engine import ManagerCore
from .records import TaskRecord, TaskState
from .slots import SlotWaiter

__all__ = ["RequestTasks"]


class RequestTasks(ManagerCore):
    """The manager's side of ``add_task``: slot, child task, error propagation."""

    async def _run_external(self, record: TaskRecord) -> None:
        """Run an ``add_task`` record in Starlette's request task."""
        context = record.run
        if not isinstance(context, Context) or not await self._acquire_external_slot(
            record
        ):
            return  # cancelled, or the manager closed, before Starlette ran it
        failure: list[Exception] = []
        try:
            # A child task, so the function runs in the context captured by
            # add_task and its own context changes stay out of the request's.
            async with anyio.create_task_group() as tg:
                if self._use_task_handles:
                    handle = tg.create_task(
                        self._execute_into(record, failure),
                        name=record.name,
                        context=context,
                    )
                    if (
                        record.finished is None
                    ):  # pragma: no branch - ended by an eager start
                        record.run = handle
                else:
                    context.run(tg.start_soon, self._execute_into, record, failure)
        finally:
            self._release_slot()
        if failure and self._propagate_errors:
            raise failure[0]

    async def _acquire_external_slot(self, record: TaskRecord) -> bool:
        """Wait, in FIFO order, for a slot for an ``add_task`` record.

        Returns True if the slot is held and the task should run.
        """
        slots = self._slots
        if slots is None:
            return True
        with self._lock:  # the caller saw it PENDING, with no await since
            if slots.take():
                return True
            waiter = SlotWaiter()
            slots.enqueue(record, waiter)
        try:
            await waiter.event.wait()
        except BaseException:
            # The request's task was cancelled while it waited: never runs.
            with self._lock:
                slots.drop_waiter(record)
            if waiter.granted:
                self._release_slot()
            await self._cancel_pending(record)
            raise
        if waiter.granted and record.state is not TaskState.PENDING:
            self._release_slot()
            return False
        return waiter.granted

    async def _execute_into(self, record: TaskRecord, failure: list[Exception]) -> None:
        error = await self._execute_scoped(record)
        if error is not None:
            failure.append(error)
