"""The FastAPI app that ``load_bench.py`` serves with uvicorn: one endpoint per case.

Each endpoint adds one background task and answers ``{"ok": true}``; the cases
differ only in how the task is added. ``/stats`` tells the benchmark what the
manager holds once the load has stopped.

``/dependency`` takes the ``TrackedTasks`` dependency, a yield dependency (it
must see the endpoint fail): ``/yield-dependency`` is plain BackgroundTasks
behind an empty yield dependency, what FastAPI's machinery alone costs.
"""

# No `from __future__ import annotations`: FastAPI reads the annotations.

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI

from bgtasks import TaskManager, TaskState, current_task, logged, retry, timeout
from bgtasks.fastapi import TrackedTasks, lifespan

manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager))


async def noop() -> None:
    return None


@logged
@retry(attempts=3)
@timeout(30)
async def decorated() -> None:
    current_task().set_progress(0.5, "halfway")


@app.get("/plain")
async def plain(background_tasks: BackgroundTasks) -> dict[str, bool]:
    background_tasks.add_task(noop)
    return {"ok": True}


@app.get("/tracked")
async def tracked(background_tasks: BackgroundTasks) -> dict[str, bool]:
    manager.add_task(background_tasks, noop)
    return {"ok": True}


@app.get("/decorated")
async def decorated_endpoint(background_tasks: BackgroundTasks) -> dict[str, bool]:
    manager.add_task(background_tasks, decorated)
    return {"ok": True}


@app.get("/dependency")
async def dependency(tasks: TrackedTasks) -> dict[str, bool]:
    tasks.add_task(noop)
    return {"ok": True}


async def _empty(background_tasks: BackgroundTasks) -> AsyncIterator[None]:
    yield


@app.get("/yield-dependency")
async def yield_dependency(
    background_tasks: BackgroundTasks, _: Annotated[None, Depends(_empty)]
) -> dict[str, bool]:
    background_tasks.add_task(noop)
    return {"ok": True}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {
        "pending": len(manager.list(state=TaskState.PENDING)),
        "running": len(manager.list(state=TaskState.RUNNING)),
        "failed": len(manager.list(state=TaskState.FAILED)),
        "cancelled": len(manager.list(state=TaskState.CANCELLED)),
    }
