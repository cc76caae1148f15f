"""Visible retries: a poller sees when a waiting task's next attempt starts."""

from __future__ import annotations

from datetime import datetime, timezone

import anyio
import pytest

from bgtasks import TaskInfo, TaskManager, TaskState, current_task
from bgtasks._context import running_task_var

pytestmark = pytest.mark.anyio

UNTIL = 1_900_000_000.5  # a time.time() timestamp
UNTIL_UTC = datetime(2030, 3, 17, 17, 46, 40, 500000, tzinfo=timezone.utc)


async def test_a_retry_wait_shows_when_the_next_attempt_starts() -> None:
    """``record_retry_wait`` shows in ``next_attempt_at`` until the next attempt."""
    waiting, resume = anyio.Event(), anyio.Event()
    after_attempt: list[TaskInfo | None] = []

    async def job() -> None:
        running = running_task_var.get()
        assert running is not None
        running.record_retry_wait(UNTIL)
        waiting.set()
        await resume.wait()
        running.record_attempt(2)
        after_attempt.append(manager.get(current_task().id))

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        await waiting.wait()
        info = handle.info()
        resume.set()
        await handle.wait(timeout=5)
    assert info is not None
    assert info.next_attempt_at == UNTIL_UTC
    assert info.to_dict()["next_attempt_at"] == "2030-03-17T17:46:40.500000+00:00"
    [again] = after_attempt
    assert again is not None
    assert (again.attempt, again.next_attempt_at) == (2, None)


@pytest.mark.parametrize("ends", ["returns", "raises"])
async def test_a_finished_task_waits_for_nothing(ends: str) -> None:
    """A task that ends while a wait is recorded shows no next attempt."""

    def job() -> None:  # sync: retry reports from the worker thread
        running = running_task_var.get()
        assert running is not None
        running.record_retry_wait(UNTIL)
        if ends == "raises":
            raise ConnectionError("down")

    async with TaskManager(log_failures=False) as manager:
        final = await manager.spawn(job).wait(timeout=5)
        late = manager.get(final.id)
    assert final.state in {TaskState.SUCCEEDED, TaskState.FAILED}
    assert (final.next_attempt_at, final.to_dict()["next_attempt_at"]) == (None, None)
    assert late == final
