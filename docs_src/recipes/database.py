import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from bgtasks import TaskManager, backoff, logged, retry, timeout
from bgtasks.fastapi import TrackedTasks, lifespan, task_router


class Session:
    # Stands for sqlalchemy.ext.asyncio.AsyncSession.
    def __init__(self, database: "Database"):
        self.database = database
        self.closed = False

    async def add_view(self, item_id: int):
        if self.closed:
            raise RuntimeError("this session is closed")
        if self.database.drop_next_connection:
            self.database.drop_next_connection = False
            self.closed = True  # a dropped connection leaves the session unusable
            raise ConnectionError("server closed the connection unexpectedly")
        self.database.views[item_id] = self.database.views.get(item_id, 0) + 1


class Database:
    # Stands for async_sessionmaker(create_async_engine(DATABASE_URL)).
    def __init__(self):
        self.views: dict[int, int] = {}
        self.sessions = itertools.count(1)
        self.drop_next_connection = False

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        next(self.sessions)
        session = Session(self)
        try:
            yield session  # SQLAlchemy: async with session.begin(): commit or roll back
        finally:
            session.closed = True


database = Database()
manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))


@logged
@retry(on=ConnectionError, attempts=3, backoff=backoff.exponential(initial=0.2))
@timeout(10)
async def count_view(item_id: int):
    async with database.session() as session:  # a new session for each attempt
        await session.add_view(item_id)


@app.post("/items/{item_id}/views", status_code=202)
async def view_item(item_id: int, tasks: TrackedTasks):
    task = tasks.add_task(count_view, item_id)  # the id, never the request's session
    return {"status_url": f"/tasks/{task.id}"}
