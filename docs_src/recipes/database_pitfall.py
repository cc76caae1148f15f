from typing import Annotated

from fastapi import BackgroundTasks, Depends, FastAPI

from bgtasks import TaskManager
from bgtasks.fastapi import lifespan

from .database import Database, Session

database = Database()
manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager))


async def get_session():
    async with database.session() as session:
        yield session


async def count_view(session: Session, item_id: int):
    await session.add_view(item_id)  # the request's session: maybe closed by now


@app.post("/items/{item_id}/views")
async def view_item(
    item_id: int,
    session: Annotated[Session, Depends(get_session)],
    background_tasks: BackgroundTasks,
):
    background_tasks.add_task(count_view, session, item_id)  # don't
    return {"queued": True}


@app.post("/items/{item_id}/views-later")
async def view_item_later(
    item_id: int, session: Annotated[Session, Depends(get_session)]
):
    manager.spawn(count_view, session, item_id)  # don't either
    return {"queued": True}
