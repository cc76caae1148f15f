from fastapi import FastAPI
from pydantic import BaseModel

from bgtasks import TaskManager, backoff, idempotent, logged, retry, timeout
from bgtasks.fastapi import TrackedTasks, lifespan, task_router

manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))

sent: list[tuple[str, int]] = []


async def push_to_devices(user_id: int, text: str):
    # Stands for a push service's HTTP API (APNs, FCM, Web Push).
    sent.append(("push", user_id))


async def email_user(user_id: int, text: str):
    # Stands for the email of the email recipe.
    sent.append(("email", user_id))


@logged
@idempotent(key="push:{event_id}")
@retry(on=ConnectionError, attempts=4, backoff=backoff.exponential(initial=0.5))
@timeout(10)
async def send_push(event_id: str, user_id: int, text: str):
    await push_to_devices(user_id, text)


@logged
@idempotent(key="email:{event_id}")
@retry(on=ConnectionError, attempts=4, backoff=backoff.exponential(initial=0.5))
@timeout(30)
async def send_email(event_id: str, user_id: int, text: str):
    await email_user(user_id, text)


class Event(BaseModel):
    id: str  # the sender's event id: the same on every redelivery
    user_id: int
    text: str


@app.post("/webhooks/comments")
async def comment_posted(event: Event, tasks: TrackedTasks):
    tasks.add_task(send_push, event.id, event.user_id, event.text)
    tasks.add_task(send_email, event.id, event.user_id, event.text)
    return {"received": event.id}  # answer fast, or the sender redelivers
