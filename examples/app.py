"""A FastAPI app with production-grade background tasks, built on bgtasks.

The classic use cases, each with the bgtasks piece it needs:

- ``POST /users``: registering a user sends a welcome email in the background.
  The SMTP server is flaky (``retry``), every call is logged without argument
  values (``logged``), and a client that retries its request does not get two
  emails (``idempotent``).
- ``POST /reports``: a slow async report with a deadline (``timeout``) that
  reports its progress; poll it with ``GET /tasks/{id}``, stop it with
  ``DELETE /tasks/{id}``.
- ``POST /images``: thumbnails of an uploaded image, made by a sync function in
  the thread pool that stops at ``checkpoint()`` when it is cancelled.
- ``/tasks``: the status and cancel API of every tracked task.
- ``/dashboard``: a live page of every tracked task (open it in a browser).
  Protect it in a real app: ``dashboard_router(manager, dependencies=[...])``.

Run it with ``uvicorn app:app`` from this directory, or ``nox -s demo``.
Needs ``fastapi`` and ``python-multipart`` (for the upload).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import itertools
import logging
import logging.config
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import FastAPI, File, HTTPException, Response, UploadFile, status
from pydantic import BaseModel, Field

from bgtasks import (
    MemoryStore,
    TaskManager,
    backoff,
    checkpoint,
    current_task,
    idempotent,
    logged,
    retry,
    timeout,
)
from bgtasks.fastapi import TrackedTasks, dashboard_router, lifespan, task_router

logger = logging.getLogger("example")

# uvicorn configures only its own loggers: without this, the records of bgtasks
# (each task's start and end, at INFO) are dropped and only bare WARNINGs show.
# Applied when uvicorn imports this module, after its own configuration, which
# it keeps. Each record's structured fields go in the line; records that lack
# one (the task manager's own) show "-".
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "tasks": {
            # Through "()", `defaults` works on Python 3.10 and 3.11 too.
            "()": "logging.Formatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s: %(message)s "
            "[task_id=%(task_id)s attempt=%(attempt)s outcome=%(outcome)s]",
            "defaults": {"task_id": "-", "attempt": "-", "outcome": "-"},
        },
    },
    "handlers": {
        "tasks": {
            "class": "logging.StreamHandler",
            "formatter": "tasks",
            "stream": "ext://sys.stderr",
        },
    },
    "loggers": {
        "bgtasks": {"handlers": ["tasks"], "level": "INFO"},
        "example": {"handlers": ["tasks"], "level": "INFO"},
    },
}
logging.config.dictConfig(LOGGING)


@dataclass(frozen=True)
class Settings:
    """What the tests and the demo tune; the defaults suit a person trying it."""

    smtp_failures: int = 2  # the fake SMTP server refuses the first N sends
    report_page_seconds: float = 0.2  # time to render one page of a report
    thumbnail_step_seconds: float = 0.05  # time for one slice of one thumbnail
    drain_timeout: float = 5.0  # at shutdown: wait this long, then cancel
    max_upload_bytes: int = 5 * 1024 * 1024


# --- Fakes of the outside world (an SMTP server, a file store) --------------


@dataclass
class Mail:
    """One delivered email."""

    message_id: str
    to: str
    subject: str


class FlakySMTP:
    """An SMTP server that is unavailable for its first ``fail_first`` sends.

    Deterministic on purpose, so the demo and the tests know what to expect.
    """

    def __init__(self, fail_first: int) -> None:
        self.fail_first = fail_first
        self.attempts = 0
        self.outbox: list[Mail] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    async def send(self, to: str, subject: str, body: str) -> str:
        """Deliver a message and return its id, or raise ConnectionError."""
        await anyio.sleep(0.001)  # the network round trip
        with self._lock:
            self.attempts += 1
            if self.attempts <= self.fail_first:
                raise ConnectionError("421 service not available, try again later")
            mail = Mail(f"msg-{next(self._ids)}", to, subject)
            self.outbox.append(mail)
        return mail.message_id


@dataclass
class ImageStore:
    """Uploaded images and their thumbnails, by name (a stand-in for S3)."""

    files: dict[str, bytes] = field(default_factory=dict)

    def save(self, name: str, data: bytes) -> None:
        """Store ``data`` under ``name``."""
        self.files[name] = data

    def load(self, name: str) -> bytes:
        """Return what was stored under ``name``."""
        return self.files[name]


# --- Background tasks ---------------------------------------------------------

# Several worker processes share state through Redis when BGTASKS_REDIS_URL is
# set: the idempotency store here, the task state in create_app. Without it,
# one store per process: a duplicate on another worker would run again.
REDIS_URL = os.environ.get("BGTASKS_REDIS_URL")
welcome_emails: Any = MemoryStore()
if REDIS_URL:
    from bgtasks.redis import RedisStore

    welcome_emails = RedisStore.from_url(REDIS_URL, prefix="example")


# Order, outside in: one idempotent unit per address; one log line per unit
# (with the task id and attempt); retries inside it. Arguments are never logged.
@idempotent(key="welcome:{email}", store=welcome_emails, ttl=24 * 3600)
@logged
@retry(on=ConnectionError, attempts=5, backoff=backoff.exponential(0.05, maximum=1))
async def send_welcome_email(smtp: FlakySMTP, email: str, username: str) -> str:
    """Send the welcome email; returns the message id (not the address)."""
    body = f"Hello {username}, thank you for registering!"
    return await smtp.send(email, "Welcome!", body)


@timeout(30)
async def generate_report(
    user_id: int, report_type: str, pages: int, page_seconds: float
) -> dict[str, Any]:
    """Render a report page by page, reporting progress after each page."""
    task = current_task()
    for page in range(1, pages + 1):
        await anyio.sleep(page_seconds)  # query and render one page
        task.set_progress(page / pages, message=f"page {page} of {pages}")
    return {"report_id": f"{report_type}-{user_id}", "pages": pages}


THUMBNAIL_SIZES = {"small": (150, 150), "medium": (600, 600), "large": (1200, 1200)}
SLICES_PER_THUMBNAIL = 4


@logged
def make_thumbnails(
    images: ImageStore, image_id: str, step_seconds: float
) -> dict[str, int]:
    """Make each thumbnail of an image (sync: runs in the thread pool)."""
    data = images.load(image_id)  # by id: the request's upload is long gone
    task = current_task()
    sizes: dict[str, int] = {}
    steps = len(THUMBNAIL_SIZES) * SLICES_PER_THUMBNAIL
    done = 0
    for name, (width, height) in THUMBNAIL_SIZES.items():
        thumbnail = bytearray()
        for part in range(SLICES_PER_THUMBNAIL):
            checkpoint()  # a cancel (or a timeout) stops the thread here
            time.sleep(step_seconds)  # resize one slice: CPU work, blocking
            thumbnail += data[part :: SLICES_PER_THUMBNAIL * width // 150]
            done += 1
            task.set_progress(done / steps, message=f"{name} {width}x{height}")
        images.save(f"{image_id}/{name}", bytes(thumbnail))
        sizes[name] = len(thumbnail)
    return sizes


# --- The API ------------------------------------------------------------------


class UserCreate(BaseModel):
    """A registration form."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$", max_length=254)
    username: str = Field(min_length=1, max_length=64)


class Accepted(BaseModel):
    """A 202 answer: the background task's id and where to poll it."""

    task_id: str
    status_url: str


class Registered(BaseModel):
    """The registered user and the task sending the welcome email."""

    email: str
    username: str
    welcome_email: Accepted


def accepted(task_id: str) -> Accepted:
    """Point the client at the task's status route."""
    return Accepted(task_id=task_id, status_url=f"/tasks/{task_id}")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; its TaskManager runs for as long as the app does."""
    settings = settings or Settings()
    backend = None
    if REDIS_URL:
        from bgtasks.redis import RedisBackend  # noqa: PLC0415 - coredis only with Redis

        lease = float(os.environ.get("BGTASKS_LEASE", "10"))
        backend = RedisBackend.from_url(
            REDIS_URL, prefix="example", lease=lease, timeout=min(2.0, lease / 3)
        )
    manager = TaskManager(drain_timeout=settings.drain_timeout, backend=backend)
    app = FastAPI(title="bgtasks example", lifespan=lifespan(manager))
    app.include_router(task_router(manager))
    app.include_router(dashboard_router(manager))
    smtp = FlakySMTP(fail_first=settings.smtp_failures)
    images = ImageStore()
    image_ids = itertools.count(1)
    users: dict[str, UserCreate] = {}
    app.state.smtp = smtp

    @app.post("/users", status_code=status.HTTP_201_CREATED)
    async def register(
        user: UserCreate, tasks: TrackedTasks, response: Response
    ) -> Registered:
        """Register a user; a repeated registration is accepted again (200)."""
        if user.email in users:
            response.status_code = status.HTTP_200_OK  # a client retry, say
        users[user.email] = user
        # Queued on every registration: @idempotent makes sure it runs once.
        handle = tasks.add_task(send_welcome_email, smtp, user.email, user.username)
        return Registered(
            email=user.email, username=user.username, welcome_email=accepted(handle.id)
        )

    @app.get("/outbox")
    async def outbox() -> dict[str, Any]:
        """What the fake SMTP server delivered (for the demo)."""
        return {
            "attempts": smtp.attempts,
            "delivered": [mail.__dict__ for mail in smtp.outbox],
        }

    @app.post("/reports", status_code=status.HTTP_202_ACCEPTED)
    async def create_report(
        user_id: int, report_type: str = "activity", pages: int = 5
    ) -> Accepted:
        """Start a report; it runs in the manager, independent of the request."""
        if not 1 <= pages <= 1000:
            raise HTTPException(422, "pages must be from 1 to 1000")
        handle = manager.spawn(
            generate_report, user_id, report_type, pages, settings.report_page_seconds
        )
        return accepted(handle.id)

    @app.post("/images", status_code=status.HTTP_202_ACCEPTED)
    async def upload_image(
        file: Annotated[UploadFile, File()], tasks: TrackedTasks
    ) -> Accepted:
        """Store an uploaded image and make its thumbnails in the background."""
        if not (file.content_type or "").startswith("image/"):
            raise HTTPException(415, "upload an image")
        data = await file.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise HTTPException(413, "image too large")
        image_id = f"img-{next(image_ids)}"
        images.save(image_id, data)
        # Pass the id, not the bytes or the UploadFile: it is closed after the response.
        handle = tasks.add_task(
            make_thumbnails, images, image_id, settings.thumbnail_step_seconds
        )
        return accepted(handle.id)

    return app


app = create_app()
