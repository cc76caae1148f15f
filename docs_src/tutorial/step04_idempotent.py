import random

from fastapi import BackgroundTasks, FastAPI

from bgtasks import backoff, checkpoint, idempotent, logged, remaining, retry, timeout

app = FastAPI()


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


@app.post("/send-notification/{email}")
async def send_notification(email: str, background_tasks: BackgroundTasks):
    background_tasks.add_task(write_notification, email, message="some notification")
    return {"message": "Notification sent in the background"}
