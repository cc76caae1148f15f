import anyio
import httpx
from fastapi import FastAPI

from bgtasks import TaskManager, current_task, timeout
from bgtasks.fastapi import lifespan, task_router

manager = TaskManager(finished_ttl=24 * 3600)  # results stay readable for a day
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))


async def query_month(user_id: int, month: int) -> int:
    # Stands for an aggregate query, one month at a time.
    await anyio.sleep(0.01)
    return user_id * month


@timeout(600)
async def build_report(user_id: int, year: int):
    task = current_task()
    totals = []
    for month in range(1, 13):
        totals.append(await query_month(user_id, month))
        task.set_progress(month / 12, message=f"{year}-{month:02d}")
    return {"user_id": user_id, "year": year, "total": sum(totals)}


@app.post("/reports", status_code=202)
async def create_report(user_id: int, year: int):
    task = manager.spawn(build_report, user_id, year)
    return {"task_id": task.id, "status_url": f"/tasks/{task.id}"}


# The client side: poll until the task has ended, a little slower each time.
async def wait_for(client: httpx.AsyncClient, status_url: str, limit: float = 60):
    delay = 0.05
    with anyio.fail_after(limit):
        while True:
            status = (await client.get(status_url)).json()
            if status["state"] in {"succeeded", "failed", "cancelled"}:
                return status
            await anyio.sleep(delay)
            delay = min(delay * 2, 2.0)
