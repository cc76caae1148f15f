import os
import random

from fastapi import Depends, FastAPI, Header, HTTPException

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
from bgtasks.fastapi import TrackedTasks, dashboard_router, lifespan, task_router

manager = TaskManager(drain_timeout=float(os.environ.get("DRAIN_TIMEOUT", "20")))
app = FastAPI(lifespan=lifespan(manager))


def require_admin(x_admin_token: str = Header(default="")):
    # Stands for your real authentication (a session, OAuth2, an API key).
    if x_admin_token != os.environ.get("ADMIN_TOKEN", "change-me"):
        raise HTTPException(status_code=403, detail="admins only")


admins_only = [Depends(require_admin)]
app.include_router(task_router(manager, dependencies=admins_only))
app.include_router(dashboard_router(manager, dependencies=admins_only))


SUBSCRIBERS = [f"reader{number}@example.com" for number in range(1, 21)]


def connect_to_mail_server(timeout: float | None):
    # Stands for smtplib.SMTP("mail.example.com", timeout=timeout), which
    # raises TimeoutError when the server does not answer in time.
    if random.random() < 1 / 3:
        raise ConnectionError("421 mail server busy, try again later")


@logged
@idempotent(key="notification:{email}:{message}", ttl=600)
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
