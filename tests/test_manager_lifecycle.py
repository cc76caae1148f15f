"""TaskManager basics: states, results, errors, ids, queries and validation."""

from __future__ import annotations

import collections.abc
import functools
import gc
import json
import logging
import weakref
from datetime import timedelta, timezone
from typing import Any

import anyio
import pytest

from bgtasks import TaskManager, TaskState, current_task
from bgtasks._context import running_task_var
from bgtasks._manager.records import TaskError
from bgtasks.exceptions import (
    ManagerNotRunningError,
    NoCurrentTaskError,
    TaskAlreadyExistsError,
    TaskNotFoundError,
)

pytestmark = pytest.mark.anyio


async def double(x: int) -> int:
    return x * 2


def add_one(x: int, *, step: int = 1) -> int:
    return x + step


async def explode(secret: str) -> None:
    raise ConnectionError(f"smtp down ({len(secret)})")


async def test_async_task_succeeds_with_its_result() -> None:
    """An async task goes PENDING -> RUNNING -> SUCCEEDED and keeps its result."""
    async with TaskManager() as manager:
        handle = manager.spawn(double, 21)
        info = manager.get(handle.id)
        assert info is not None
        assert info.state == TaskState.PENDING
        assert info.started_at is None
        done = await handle.wait(timeout=5)
    assert done.state == TaskState.SUCCEEDED
    assert done.result == 42
    assert done.error is None
    assert done.name == "double"
    assert done.created_at.tzinfo is timezone.utc
    assert done.started_at is not None
    assert done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at


async def test_sync_task_runs_in_a_thread_with_kwargs() -> None:
    """A plain function runs in a worker thread and gets args and kwargs."""
    async with TaskManager() as manager:
        info = await manager.spawn(add_one, 1, step=41).wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED
    assert info.result == 42


async def test_failure_is_recorded_as_type_and_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising task ends FAILED with the error's name and message, logged."""
    async with TaskManager() as manager:
        with caplog.at_level(logging.ERROR, logger="bgtasks"):
            info = await manager.spawn(explode, "hunter2").wait(timeout=5)
    assert info.state == TaskState.FAILED
    assert TaskError("ConnectionError", "smtp down (7)") == info.error
    assert info.result is None
    [record] = [r for r in caplog.records if r.name == "bgtasks"]
    assert record.exc_info is not None
    assert "explode" in record.getMessage()
    assert "hunter2" not in record.getMessage()


async def test_log_failures_false_keeps_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """``log_failures=False`` records the failure without logging it."""
    async with TaskManager(log_failures=False) as manager:
        with caplog.at_level(logging.ERROR, logger="bgtasks"):
            info = await manager.spawn(explode, "x").wait(timeout=5)
    assert info.state == TaskState.FAILED
    assert caplog.records == []


async def test_unprintable_and_long_error_messages() -> None:
    """A broken ``__str__`` and a huge message still give a bounded TaskError."""

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError

    async def broken() -> None:
        raise Unprintable

    async def huge() -> None:
        raise ValueError("x" * 10_000)

    async with TaskManager(log_failures=False) as manager:
        first = await manager.spawn(broken).wait(timeout=5)
        second = await manager.spawn(huge).wait(timeout=5)
    assert first.error is not None
    assert "<unprintable " in first.error.message
    assert second.error is not None
    assert len(second.error.message) == 2000


async def test_base_exception_is_recorded_then_propagates() -> None:
    """A non-cancellation BaseException is recorded FAILED and not swallowed."""

    class Fatal(BaseException):
        pass

    async def fatal() -> None:
        raise Fatal("stop")

    manager = TaskManager()
    handles = []

    async def run() -> None:
        async with manager:
            handles.append(manager.spawn(fatal))
            await anyio.sleep(1)

    with pytest.raises(BaseException) as caught:  # noqa: PT011 - a group, checked below
        await run()
    assert caught.group_contains(Fatal)
    info = handles[0].info()
    assert info is not None
    assert info.state == TaskState.FAILED
    assert info.error is not None
    assert (Fatal.__qualname__, "stop") == (info.error.type, info.error.message)


async def test_to_dict_is_json_serializable() -> None:
    """``to_dict`` gives ISO times, state values, and JSON results only."""
    async with TaskManager(log_failures=False) as manager:
        ok = await manager.spawn(double, 2).wait(timeout=5)
        odd = await manager.spawn(functools.partial(_returning, object())).wait(
            timeout=5
        )
        nan = await manager.spawn(functools.partial(_returning, float("nan"))).wait(
            timeout=5
        )
        bad = await manager.spawn(explode, "pw").wait(timeout=5)
    data = ok.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["state"] == "succeeded"
    assert data["result"] == 4
    assert data["created_at"].endswith("+00:00")
    assert "result" not in odd.to_dict()
    assert "result" not in nan.to_dict()
    assert bad.to_dict()["error"] == {
        "type": "ConnectionError",
        "message": "smtp down (2)",
    }
    hidden = bad.to_dict(include_error_message=False)
    assert hidden["error"] == {"type": "ConnectionError", "message": None}
    assert str(bad.state) == "failed"


async def _returning(value: Any) -> Any:
    return value


async def test_random_ids_are_unguessable_and_unique() -> None:
    """Default ids are 22 URL-safe characters, all different."""
    async with TaskManager() as manager:
        ids = {manager.spawn(double, i).id for i in range(300)}
    assert len(ids) == 300
    assert all(
        len(i) == 22 and i.replace("-", "").replace("_", "").isalnum() for i in ids
    )


async def test_given_id_rules() -> None:
    """A given id is validated, refused while active, reusable once finished."""
    async with TaskManager() as manager:
        gate = anyio.Event()
        first = manager.spawn_with_id("nightly-report_1", gate.wait)
        assert first.id == "nightly-report_1"
        with pytest.raises(TaskAlreadyExistsError, match="nightly-report_1"):
            manager.spawn_with_id("nightly-report_1", double, 1)
        gate.set()
        await first.wait(timeout=5)
        second = manager.spawn_with_id("nightly-report_1", double, 1)
        assert (await second.wait(timeout=5)).result == 2
        assert first.info() is None  # replaced: the old handle sees nothing
        for bad in ["", "a/b", "x" * 129, "é", 7]:
            with pytest.raises(ValueError, match="_task_id"):
                manager.spawn_with_id(bad, double, 1)  # type: ignore[call-overload]
        assert [second.id] == [i.id for i in manager.list()]


async def test_task_id_keyword_still_works() -> None:
    """``_task_id=``, untyped now, still names the task and is not passed on."""
    async with TaskManager() as manager:
        handle = manager.spawn(double, 4, _task_id="legacy-1")  # type: ignore[call-arg]
        info = await handle.wait(timeout=5)
    assert (info.id, info.result) == ("legacy-1", 8)


async def test_get_list_and_limits() -> None:
    """``list`` is newest first, filters by state and honours ``limit``."""
    async with TaskManager() as manager:
        gate = anyio.Event()
        done = [manager.spawn(double, i) for i in range(3)]
        for handle in done:
            await handle.wait(timeout=5)
        blocked = manager.spawn(gate.wait)
        await anyio.sleep(0.01)
        assert [blocked.id, *(h.id for h in reversed(done))] == [
            i.id for i in manager.list()
        ]
        assert [blocked.id] == [i.id for i in manager.list(state=TaskState.RUNNING)]
        assert [blocked.id] == [i.id for i in manager.list(state="running")]
        assert len(manager.list(state=TaskState.SUCCEEDED, limit=2)) == 2
        assert manager.list(limit=0) == []
        with pytest.raises(ValueError, match="limit"):
            manager.list(limit=-1)
        with pytest.raises(ValueError):  # noqa: PT011 - the enum's own message
            manager.list(state="bogus")
        assert manager.get("unknown") is None
        gate.set()


async def test_wait_unknown_and_timeout() -> None:
    """``wait`` raises TaskNotFoundError for unknown ids, TimeoutError on time."""
    async with TaskManager() as manager:
        with pytest.raises(TaskNotFoundError, match="nope"):
            await manager.wait("nope")
        gate = anyio.Event()
        handle = manager.spawn(gate.wait)
        with pytest.raises(TimeoutError):
            await manager.wait(handle.id, timeout=0.01)
        gate.set()
        info = await manager.wait(handle.id, timeout=5)
        assert info.state == TaskState.SUCCEEDED
        assert info == await manager.wait(handle.id)


async def test_not_running_refuses_work() -> None:
    """Spawning before entering or after closing raises ManagerNotRunningError."""
    manager = TaskManager()
    assert [manager.running] == [False]
    with pytest.raises(ManagerNotRunningError, match="async with manager"):
        manager.spawn(double, 1)
    async with manager:
        assert [manager.running] == [True]
        with pytest.raises(RuntimeError, match="already running"):
            await manager.__aenter__()
    assert not manager.running
    with pytest.raises(ManagerNotRunningError):
        manager.spawn(double, 1)
    await manager.aclose()  # closing a closed manager is a no-op


async def test_manager_can_be_entered_again() -> None:
    """A closed manager can run again and keeps its history."""
    manager = TaskManager()
    async with manager:
        first = await manager.spawn(double, 1).wait(timeout=5)
    async with manager:
        second = await manager.spawn(double, 2).wait(timeout=5)
    assert [second.id, first.id] == [i.id for i in manager.list()]
    assert "stopped" in repr(manager)


async def test_submitting_what_cannot_run_is_refused() -> None:
    """Non-callables and generator functions raise TypeError at spawn time."""

    def gen() -> Any:
        yield 1

    async def agen() -> Any:
        yield 1

    async with TaskManager() as manager:
        with pytest.raises(TypeError, match="needs a function"):
            manager.spawn(42)  # type: ignore[call-overload]
        with pytest.raises(TypeError, match="generator"):
            manager.spawn(gen)
        with pytest.raises(TypeError, match="generator"):
            manager.spawn(agen)
        assert manager.list() == []


async def test_names_of_partials_and_callable_objects() -> None:
    """Names come from the underlying function, or the callable's class."""

    class Job:
        async def __call__(self) -> str:
            return "job"

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self) -> str:
            return "sync"

    async with TaskManager() as manager:
        part = await manager.spawn(functools.partial(double, 4)).wait(timeout=5)
        job = await manager.spawn(Job()).wait(timeout=5)
        odd = await manager.spawn(Unhashable()).wait(timeout=5)
    assert (part.name, part.result) == ("double", 8)
    assert (job.name.rsplit(".", 1)[-1].lower(), job.result) == ("job", "job")
    assert odd.result == "sync"


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"max_concurrency": 0}, ValueError, "max_concurrency"),
        ({"max_concurrency": True}, TypeError, "max_concurrency"),
        ({"max_finished": -1}, ValueError, "max_finished"),
        ({"max_finished": 1.5}, TypeError, "max_finished"),
        ({"finished_ttl": -1}, ValueError, "finished_ttl"),
        ({"finished_ttl": "1h"}, TypeError, "finished_ttl"),
        ({"drain_timeout": float("nan")}, ValueError, "drain_timeout"),
        ({"clock": 3}, TypeError, "clock"),
    ],
)
def test_bad_options_fail_at_construction(
    options: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Each bad option raises at construction, naming the option."""
    with pytest.raises(error, match=match):
        TaskManager(**options)


def test_ttl_accepts_timedelta_and_none() -> None:
    """``finished_ttl`` takes seconds, a timedelta, or None."""
    TaskManager(finished_ttl=timedelta(minutes=5))
    TaskManager(finished_ttl=None)


async def test_aclose_validates_timeout() -> None:
    """``aclose(timeout=...)`` refuses negative values."""
    async with TaskManager() as manager:
        with pytest.raises(ValueError, match="timeout"):
            await manager.aclose(timeout=-1)


async def test_progress_from_async_and_sync_tasks() -> None:
    """``set_progress`` is readable through ``get`` from both kinds of task."""
    gate = anyio.Event()

    async def async_job() -> None:
        task = current_task()
        task.set_progress(0.4, message="rendering charts")
        await gate.wait()

    def sync_job() -> str:
        current_task().set_progress(1)
        return current_task().name

    async with TaskManager() as manager:
        handle = manager.spawn(async_job)
        await anyio.sleep(0.01)
        info = manager.get(handle.id)
        assert info is not None
        assert (info.progress, info.message) == (0.4, "rendering charts")
        gate.set()
        sync_info = await manager.spawn(sync_job).wait(timeout=5)
    assert (sync_info.progress, sync_info.message) == (1.0, None)
    assert sync_info.name == sync_info.result


async def test_progress_validation_and_context_details() -> None:
    """Bad progress values raise; the context exposes id, name and attempt."""
    seen: dict[str, Any] = {}

    async def job() -> None:
        task = current_task()
        for bad in [-0.1, 1.5, float("nan")]:
            with pytest.raises(ValueError, match=r"0\.0 to 1\.0"):
                task.set_progress(bad)
        with pytest.raises(TypeError):
            task.set_progress(True)
        with pytest.raises(TypeError):
            task.set_progress("half")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="message"):
            task.set_progress(0.5, message=3)  # type: ignore[arg-type]
        running = running_task_var.get()
        assert running is not None
        running.record_attempt(3)
        task.record_attempt(4)
        seen.update(
            id=task.id,
            attempt=task.attempt,
            repr=repr(task),
            cancel=task.cancel_requested,
        )

    async with TaskManager() as manager:
        handle = manager.spawn(job)
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED, info.error
    assert info.attempt == 4
    assert {
        "id": handle.id,
        "attempt": 4,
        "repr": seen["repr"],
        "cancel": False,
    } == seen
    assert handle.id in repr(handle)


async def test_late_updates_to_a_finished_task_are_ignored() -> None:
    """A context kept after the task ended cannot change its final snapshot."""
    kept = []

    async def job() -> None:
        kept.append(current_task())

    async with TaskManager() as manager:
        info = await manager.spawn(job).wait(timeout=5)
        kept[0].set_progress(0.9)
        kept[0].record_attempt(7)
        assert info == manager.get(info.id)


async def test_function_checks_are_cached_and_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-function cache empties itself when full."""
    from bgtasks._manager import submit as _submit

    monkeypatch.setattr(_submit, "_DESCRIPTIONS_MAX", 2)
    monkeypatch.setattr(_submit, "_DESCRIPTIONS", {})
    functions = [functools.partial(double, n) for n in range(5)]  # all alive
    async with TaskManager() as manager:
        for func in functions:
            await manager.spawn(func).wait(timeout=5)
    assert len(_submit._DESCRIPTIONS) <= 2


async def test_a_function_leaves_the_cache_when_it_is_gone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The cache holds functions weakly, and forgets each one as it goes."""
    from bgtasks._manager import submit as _submit

    monkeypatch.setattr(_submit, "_DESCRIPTIONS", {})
    func = functools.partial(double, 1)
    async with TaskManager() as manager:
        await manager.spawn(func).wait(timeout=5)
        key = id(func)
        assert key in _submit._DESCRIPTIONS
        # A callback for an entry that was replaced since leaves the new one.
        _submit._forget(key, weakref.ref(double))
        assert key in _submit._DESCRIPTIONS
        del func
        gc.collect()
        assert key not in _submit._DESCRIPTIONS


async def test_functions_without_weak_references_run_uncached(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A callable object that takes no weak reference is checked at every spawn."""
    from bgtasks._manager import submit as _submit

    class Doubler:
        __slots__ = ()

        async def __call__(self, x: int) -> int:
            return x * 2

    monkeypatch.setattr(_submit, "_DESCRIPTIONS", {})
    async with TaskManager() as manager:
        info = await manager.spawn(Doubler(), 4).wait(timeout=5)
    assert info.name.endswith(".Doubler")
    assert info.result == 8
    assert _submit._DESCRIPTIONS == {}


def test_a_record_is_awaited_never_driven() -> None:
    """The record handed to anyio as a coroutine refuses send() and throw()."""
    from bgtasks._manager.records import TaskRecord

    record = TaskRecord(None, "id", "double", 0.0, double, (1,), None, None)  # type: ignore[arg-type]
    assert isinstance(record, collections.abc.Coroutine)
    with pytest.raises(TypeError, match="awaited"):
        record.send(None)
    with pytest.raises(TypeError, match="awaited"):
        record.throw(ValueError("x"))
    record.close()  # what anyio does with a coroutine it cannot start
    assert record.state is TaskState.PENDING


async def test_launch_of_a_cancelled_record_frees_its_slot() -> None:
    """A record cancelled between registration and launch gives its slot back."""
    from bgtasks._manager.records import TaskRecord
    from bgtasks._manager.submit import capture

    async with TaskManager(max_concurrency=1) as manager:
        record = TaskRecord(
            manager._engine, "", "double", 0.0, double, (1,), None, None
        )
        record.run = capture(None)
        assert manager._engine.register(record, spawned=True)
        assert await manager._engine.cancel_record(record)
        manager._engine.launch(record)
        assert manager._engine.slots is not None
        assert manager._engine.slots.held == 0


def test_current_task_outside_a_task_raises() -> None:
    """``current_task()`` outside a managed task says how to fix it."""
    with pytest.raises(NoCurrentTaskError, match=r"manager\.spawn"):
        current_task()
