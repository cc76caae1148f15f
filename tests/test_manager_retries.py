"""Visible retries: a poller sees when a waiting task's next attempt starts."""

from __future__ import annotations

from datetime import datetime, timezone

import anyio
import anyio.from_thread
import pytest

from bgtasks import TaskInfo, TaskManager, TaskState, current_task, logged, retry
from bgtasks._context import running_task_var
from bgtasks.backoff import fixed

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


@retry(attempts=3, backoff=fixed(0))
async def _send_one(failures: list[int]) -> None:
    """A retried helper: fails while ``failures`` has items."""
    if failures:
        failures.pop()
        raise ConnectionError("try again")


async def test_a_retried_helper_leaves_the_task_s_attempt_alone() -> None:
    """A task without retry calling a retried helper stays on attempt 1."""
    seen: list[int] = []

    async def broadcast() -> None:
        for _ in range(3):
            await _send_one([1, 1])  # two failed attempts each time
        seen.append(current_task().attempt)

    async with TaskManager() as manager:
        info = await manager.spawn(broadcast).wait(timeout=5)
    assert (info.state, info.attempt, info.next_attempt_at) == (
        TaskState.SUCCEEDED,
        1,
        None,
    )
    assert seen == [1]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_the_task_s_own_retry_counts_not_its_helpers(kind: str) -> None:
    """The task's own retry layer reports; the helper's retries inside do not."""
    outer = [1]  # the task's own first attempt fails once

    @retry(attempts=2, backoff=fixed(0))
    @logged
    async def notify() -> None:
        await _send_one([1, 1])
        if outer:
            outer.pop()
            raise ConnectionError("again")

    @retry(attempts=2, backoff=fixed(0))
    def notify_sync() -> None:
        anyio.from_thread.run(_send_one, [1, 1])
        if outer:
            outer.pop()
            raise ConnectionError("again")

    async with TaskManager(log_failures=False) as manager:
        handle = (
            manager.spawn(notify) if kind == "async" else manager.spawn(notify_sync)
        )
        info = await handle.wait(timeout=5)
    assert (info.state, info.attempt) == (TaskState.SUCCEEDED, 2)
