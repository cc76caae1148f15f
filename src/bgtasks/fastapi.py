"""FastAPI integration: the tracked-tasks dependency and the status/cancel router.

Needs the extra: ``pip install "bgtasks[fastapi]"``.

```python
from fastapi import FastAPI
from bgtasks import TaskManager
from bgtasks.fastapi import TrackedTasks, lifespan, task_router, task_tag

manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager), openapi_tags=[task_tag()])
app.include_router(task_router(manager))


@app.post("/reports", status_code=202)
async def create_report(user_id: int, tasks: TrackedTasks) -> dict[str, str]:
    handle = tasks.add_task(print, "report for", user_id)
    return {"task_id": handle.id}
```
"""

from __future__ import annotations

try:
    from ._web.dashboard.fastapi import dashboard_router
    from ._web.fastapi import TrackedTasks, task_router, task_tag, tracked_tasks
except ModuleNotFoundError as _exc:
    if _exc.name != "fastapi":
        raise
    raise ImportError(
        "bgtasks.fastapi needs FastAPI, which is not installed: "
        'pip install "bgtasks[fastapi]"'
    ) from _exc
from ._web.lifespan import lifespan
from ._web.tracked import TrackedBackgroundTasks

__all__ = [
    "TrackedBackgroundTasks",
    "TrackedTasks",
    "dashboard_router",
    "lifespan",
    "task_router",
    "task_tag",
    "tracked_tasks",
]
