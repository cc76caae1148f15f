import anyio
from fastapi import FastAPI, HTTPException

from bgtasks import TaskManager, current_task, timeout
from bgtasks.exceptions import TaskAlreadyExistsError
from bgtasks.fastapi import lifespan, task_router

# At most two exports run at once; the others wait, in order, as "pending".
manager = TaskManager(max_concurrency=2, drain_timeout=30)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))


async def export_rows(user_id: int, batch: int) -> int:
    # Stands for reading one batch of rows and writing it to a CSV in storage.
    await anyio.sleep(0.01)
    return 1000


@timeout(3600)
async def export_account(user_id: int):
    task = current_task()
    rows = 0
    for batch in range(10):
        rows += await export_rows(user_id, batch)
        task.set_progress((batch + 1) / 10, message=f"{rows} rows")
    return {"rows": rows, "file": f"/exports/{user_id}.csv"}


@app.post("/users/{user_id}/export", status_code=202)
async def start_export(user_id: int):
    try:
        # One export per user at a time: the id says which one.
        task = manager.spawn(export_account, user_id, _task_id=f"export-{user_id}")
    except TaskAlreadyExistsError:
        raise HTTPException(
            409, "an export of this account is already running"
        ) from None
    return {"status_url": f"/tasks/{task.id}"}
