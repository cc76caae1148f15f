"""Argument checks shared by the decorators and the TaskManager.

One implementation each, so "a number of seconds or a timedelta" and "an
int of at least N" mean the same thing, with the same kind of message,
wherever bgtasks takes one.
"""

from __future__ import annotations

import math
import numbers
from datetime import timedelta

__all__ = ["check_int", "to_seconds"]


def to_seconds(
    value: object,
    arg: str,
    *,
    finite: bool = True,
    zero_ok: bool = False,
    hint: str = "",
) -> float:
    """Return a duration given as a real number or a ``timedelta``, in seconds.

    Args:
        value: what the user passed.
        arg: the argument as the user wrote it, for messages: ``"retry(deadline=...)"``.
        finite: refuse ``math.inf``.
        zero_ok: accept 0 (otherwise the duration must be positive).
        hint: a sentence appended to the ValueError's message.

    Raises:
        TypeError: ``value`` is not a real number (a bool is not) or a timedelta.
        ValueError: ``value`` is NaN, negative, zero unless ``zero_ok``, or
            infinite when ``finite``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{arg} takes a number of seconds or a datetime.timedelta, "
            f"got {type(value).__name__} {value!r}."
        )
    else:
        seconds = float(value)
    low_ok = seconds >= 0 if zero_ok else seconds > 0  # NaN fails both
    if not low_ok or (finite and math.isinf(seconds)):
        bound = "0 or more" if zero_ok else "positive"
        raise ValueError(
            f"{arg} must be {bound}{' and finite' if finite else ''} seconds, got "
            f"{value!r}: write e.g. 30 or timedelta(minutes=5).{hint}"
        )
    return seconds


def check_int(name: str, value: object, *, minimum: int, none_ok: bool = False) -> None:
    """Refuse what is not an int (a bool is not) of at least ``minimum``.

    Args:
        name: the argument as the user wrote it, for messages.
        value: what the user passed; ``None`` is the caller's to allow first.
        minimum: the smallest accepted value.
        none_ok: say in the message that ``None`` is accepted too.

    Raises:
        TypeError: ``value`` is not an int.
        ValueError: ``value`` is below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(
            f"{name} must be an int{' or None' if none_ok else ''}, got {value!r}."
        )
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}.")
