"""Starlette integration: tracked BackgroundTasks, the lifespan, the status/cancel API.

```python
from starlette.applications import Starlette
from starlette.routing import Mount
from bgtasks import TaskManager
from bgtasks.starlette import lifespan, task_router

manager = TaskManager()
app = Starlette(
    lifespan=lifespan(manager),
    routes=[Mount("/tasks", app=task_router(manager))],
)
```
"""

from __future__ import annotations

from ._web.dashboard.routes import dashboard_router
from ._web.lifespan import lifespan
from ._web.routes import task_router
from ._web.tracked import TrackedBackgroundTasks

__all__ = ["TrackedBackgroundTasks", "dashboard_router", "lifespan", "task_router"]
