import os
import random

from fastapi import FastAPI

from bgtasks import (
    TaskManager,
    backoff,
    checkpoint,
    current_task,
    idempotent,
    logged,
    remaining,
    retry,
    timeout,
)
from bgtasks.fastapi import TrackedTasks, lifespan, task_router

# Every worker process reaches one Redis: the task states and the idempotency
# keys live there. Without BGTASKS_REDIS_URL (one process: development, unit
# tests) both stay in memory, as before.
REDIS_URL = os.environ.get("BGTASKS_REDIS_URL")
REDIS_PREFIX = os.environ.get("BGTASKS_REDIS_PREFIX", "notifications")
backend = store = None
if REDIS_URL:
    from bgtasks.redis import RedisBackend, RedisStore

    backend = RedisBackend.from_url(REDIS_URL, prefix=REDIS_PREFIX)
    store = RedisStore.from_url(REDIS_URL, prefix=REDIS_PREFIX)

manager = TaskManager(
    drain_timeout=float(os.environ.get("DRAIN_TIMEOUT", "20")), backend=backend
)
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))


SUBSCRIBERS = [f"reader{number}@example.com" for number in range(1, 21)]


def connect_to_mail_server(timeout: float | None):
    # Stands for smtplib.SMTP("mail.example.com", timeout=timeout), which
    # raises TimeoutError when the server does not answer in time.
    if random.random() < 1 / 3:
        raise ConnectionError("421 mail server busy, try again later")


@logged
@idempotent(key="notification:{email}:{message}", ttl=600, lease=120, store=store)
@retry(
    on=(ConnectionError, TimeoutError),
    attempts=5,
    backoff=backoff.exponential(initial=0.5),
)
@timeout(10)
def write_notification(email: str, message=""):
    connect_to_mail_server(timeout=remaining())
    checkpoint()
    with open("log.txt", mode="w") as email_file:
        content = f"notification for {email}: {message}"
        email_file.write(content)


@app.post("/send-notification/{email}", status_code=202)
async def send_notification(email: str, background_tasks: TrackedTasks):
    task = background_tasks.add_task(
        write_notification, email, message="some notification"
    )
    return {
        "message": "Notification sent in the background",
        "task_id": task.id,
        "status_url": f"/tasks/{task.id}",
    }


def notify_subscribers(message: str):
    task = current_task()
    for sent, email in enumerate(SUBSCRIBERS, start=1):
        checkpoint()
        write_notification(email, message=message)
        task.set_progress(sent / len(SUBSCRIBERS), message=f"{sent} sent")
    return {"sent": len(SUBSCRIBERS)}


@app.post("/notify-subscribers", status_code=202)
async def notify_all(message: str):
    task = manager.spawn(notify_subscribers, message)
    return {"task_id": task.id, "status_url": f"/tasks/{task.id}"}
