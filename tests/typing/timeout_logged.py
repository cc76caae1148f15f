"""Checked by mypy and pyright, never run: ``timeout`` and ``logged`` keep types.

Each decorated function must keep its parameters and return type, whatever
the form of the decorator; ``logged(suppress=True)`` adds ``None`` to the
return type, because a failed call then returns ``None``.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from typing_extensions import assert_type

from bgtasks import checkpoint, logged, remaining, timeout


@timeout(30)
async def generate_report(user_id: int, *, full: bool = False) -> dict[str, int]:
    return {"user_id": user_id}


@timeout(timedelta(seconds=10))
def fetch_invoice(invoice_id: str) -> bytes:
    checkpoint()
    left = remaining()
    assert_type(left, float | None)
    return invoice_id.encode()


@logged
async def send_welcome_email(email: str) -> None: ...


@logged
def write_notification(email: str, message: str = "") -> int:
    return len(message)


@logged(logger="app.tasks", level=logging.DEBUG, log_args=True, redact=("token",))
async def charge(user_id: int, token: str) -> str:
    return token


@logged()
def empty_options(n: int) -> float:
    return n / 2


@logged(suppress=True)
async def may_fail(n: int) -> int:
    return n


@logged(suppress=True)
def may_fail_sync(n: int) -> str:
    return str(n)


@logged(suppress=False)
def never_suppressed(n: int) -> str:
    return str(n)


@logged
@timeout(5)
async def stacked(user_id: int) -> list[int]:
    return [user_id]


async def check_async() -> None:
    assert_type(await generate_report(1, full=True), dict[str, int])
    assert_type(await send_welcome_email("a@example.com"), None)
    assert_type(await charge(1, "t"), str)
    assert_type(await may_fail(1), int | None)
    assert_type(await stacked(1), list[int])
    await assert_type(may_fail(2), Coroutine[Any, Any, int | None])


def check_sync() -> None:
    assert_type(fetch_invoice("inv-1"), bytes)
    assert_type(write_notification("a@example.com", message="hi"), int)
    assert_type(may_fail_sync(1), str | None)
    assert_type(never_suppressed(1), str)
    assert_type(empty_options(1), float)
    assert_type(checkpoint(), None)
    fetch_invoice(1)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    write_notification("a", 2)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
