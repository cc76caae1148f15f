import itertools
import smtplib
from datetime import timedelta
from typing import Annotated

import anyio
from fastapi import FastAPI, Header
from pydantic import BaseModel

from bgtasks import TaskManager, backoff, idempotent, logged, retry, timeout
from bgtasks.fastapi import TrackedTasks, lifespan, task_router

manager = TaskManager()
app = FastAPI(lifespan=lifespan(manager))
app.include_router(task_router(manager))

outbox: list[tuple[str, str]] = []


async def smtp_send(to: str, subject: str) -> None:
    # Stands for aiosmtplib.send(message, hostname="smtp.example.com", ...).
    await anyio.sleep(0.01)
    outbox.append((to, subject))


def is_transient(error: Exception) -> bool:
    # A 4xx SMTP answer means "try again later"; a 5xx one will not change.
    if isinstance(error, smtplib.SMTPResponseException):
        return 400 <= error.smtp_code < 500
    return isinstance(error, (ConnectionError, TimeoutError))


@logged
@idempotent(key="welcome:{user_id}", ttl=timedelta(days=7))
@retry(on=is_transient, attempts=6, backoff=backoff.exponential(initial=1, maximum=60))
@timeout(30)
async def send_welcome_email(user_id: int, email: str):
    await smtp_send(email, "Welcome aboard!")


@logged
@idempotent(key="reset:{request_key}", ttl=timedelta(hours=1))
@retry(on=is_transient, attempts=6, backoff=backoff.exponential(initial=1, maximum=60))
@timeout(30)
async def send_password_reset(request_key: str, email: str):
    await smtp_send(email, "Reset your password")


class SignUp(BaseModel):
    email: str


users: dict[str, int] = {}
user_ids = itertools.count(1)


@app.post("/users", status_code=201)
async def sign_up(form: SignUp, tasks: TrackedTasks):
    user_id = users.setdefault(form.email, next(user_ids))  # a retry: same user
    task = tasks.add_task(send_welcome_email, user_id, form.email)
    return {"user_id": user_id, "welcome_email": f"/tasks/{task.id}"}


@app.post("/password-resets", status_code=202)
async def reset_password(
    email: str,
    tasks: TrackedTasks,
    idempotency_key: Annotated[str, Header(min_length=8, max_length=64)],
):
    task = tasks.add_task(send_password_reset, idempotency_key, email)
    return {"status_url": f"/tasks/{task.id}"}
