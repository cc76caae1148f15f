"""Tasks run with a copy of the context variables of the moment they were submitted."""

from __future__ import annotations

import contextvars
import sys
from collections.abc import Callable

import anyio
import anyio.to_thread
import pytest

from bgtasks import TaskHandle, TaskManager, TaskState, current_task

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar(
    "request_id", default="-"
)


async def read_async() -> tuple[str, str]:
    value = request_id.get()
    request_id.set("changed-by-task")
    return value, current_task().id


def read_sync() -> tuple[str, str]:
    value = request_id.get()
    request_id.set("changed-by-task")
    return value, current_task().id


# Not named "func": anyio 4.11's pytest runner passes the test function by that name.
@pytest.mark.parametrize("task_fn", [read_async, read_sync], ids=["async", "sync"])
async def test_context_is_captured_at_spawn(task_fn: Callable[[], object]) -> None:
    """The task sees the submitter's values; its own changes stay inside it."""
    async with TaskManager() as manager:
        token = request_id.set("req-1")
        handle = manager.spawn(task_fn)
        request_id.set("req-2")  # after submission: not seen by the task
        info = await handle.wait(timeout=5)
        request_id.reset(token)
    assert ("req-1", handle.id) == info.result
    assert request_id.get() == "-"


@pytest.mark.parametrize("task_fn", [read_async, read_sync], ids=["async", "sync"])
async def test_context_is_captured_in_a_worker_thread(
    task_fn: Callable[[], object],
) -> None:
    """Spawned from a sync endpoint's thread, the task sees that thread's values."""
    async with TaskManager() as manager:

        def endpoint() -> TaskHandle[object]:
            request_id.set("from-thread")
            return manager.spawn(task_fn)

        handle = await anyio.to_thread.run_sync(endpoint)
        info = await handle.wait(timeout=5)
    assert ("from-thread", handle.id) == info.result


async def test_nested_spawn_has_its_own_current_task() -> None:
    """A task spawned by a task sees itself as current, not its parent."""
    async with TaskManager() as manager:

        async def parent() -> tuple[str, str]:
            child = manager.spawn(read_async)
            child_info = await child.wait(timeout=5)
            assert child_info.result is not None
            return current_task().id, child_info.result[1]

        handle = manager.spawn(parent)
        info = await handle.wait(timeout=5)
    assert info.state == TaskState.SUCCEEDED
    assert info.result is not None
    parent_id, child_id = info.result
    assert handle.id == parent_id
    assert child_id != parent_id


async def test_context_is_captured_for_a_queued_task() -> None:
    """A task that waits for a concurrency slot sees the values of its submission."""
    gate = anyio.Event()

    async def hold() -> None:
        await gate.wait()

    async with TaskManager(max_concurrency=1) as manager:
        manager.spawn(hold)
        token = request_id.set("queued")
        handle = manager.spawn(read_async)
        request_id.reset(token)  # before the task gets its slot
        gate.set()
        info = await handle.wait(timeout=5)
    assert ("queued", handle.id) == info.result


@pytest.mark.skipif(sys.version_info < (3, 12), reason="eager tasks: Python 3.12+")
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_spawn_under_an_eager_task_factory() -> None:
    """An eager task factory changes nothing: same context, nothing kept at the end."""
    import asyncio

    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined,unused-ignore]
    try:
        async with TaskManager() as manager:
            token = request_id.set("eager")
            handle = manager.spawn(read_async)
            request_id.reset(token)
            info = await handle.wait(timeout=5)
            assert handle._record.run is None
            # Retention keeps a tuple of plain values, nothing of the run.
            assert isinstance(manager._engine.registry.get(handle.id), tuple)
    finally:
        loop.set_task_factory(None)
    assert ("eager", handle.id) == info.result


class _Greeter:
    def __init__(self, greeting: str) -> None:
        self.greeting = greeting

    async def greet(self, name: str, *, punctuation: str = ".") -> str:
        return f"{self.greeting}, {name}{punctuation}"

    def greet_sync(self, name: str) -> str:
        return f"{self.greeting}, {name}."


async def test_bound_methods_run_on_their_object() -> None:
    """An async bound method runs on its own object, with args and kwargs."""
    hello, hi = _Greeter("Hello"), _Greeter("Hi")
    async with TaskManager() as manager:
        first = await manager.spawn(hello.greet, "Ada", punctuation="!").wait(timeout=5)
        second = await manager.spawn(hi.greet, "Bob").wait(timeout=5)
    assert (first.name, first.result) == ("_Greeter.greet", "Hello, Ada!")
    assert (second.name, second.result) == ("_Greeter.greet", "Hi, Bob.")


async def test_bound_methods_are_described_once_per_function(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Bound methods, new objects at every access, share their function's entry.

    ``async def`` functions and methods need no entry at all: their name and
    kind are read straight off the function.
    """
    from bgtasks._manager import submit as _submit

    monkeypatch.setattr(_submit, "_DESCRIPTIONS", {})
    greeters = [_Greeter(str(n)) for n in range(3)]
    async with TaskManager() as manager:
        for greeter in greeters:
            await manager.spawn(greeter.greet, "x").wait(timeout=5)
        assert _submit._DESCRIPTIONS == {}
        results = [
            await manager.spawn(greeter.greet_sync, "x").wait(timeout=5)
            for greeter in greeters
        ]
    assert [info.result for info in results] == ["0, x.", "1, x.", "2, x."]
    [(ref, description)] = _submit._DESCRIPTIONS.values()
    assert ref() is _Greeter.greet_sync
    assert description == ("_Greeter.greet_sync", False)
