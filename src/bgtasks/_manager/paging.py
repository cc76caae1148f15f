"""Pages of ``TaskManager.list()``: the page type and its opaque cursors.

A cursor names a point in the newest-first order, not a position: it holds
the sequence number the registry gave the last task of a page, so tasks added
or dropped between two requests neither repeat nor hide the ones still
stored. It also holds the registry's random epoch, so a cursor from another
manager (another process, or before a restart) is refused instead of paging
through the wrong list. The text is URL-safe base64 of a small versioned JSON
object, and only the exact text ``encode_cursor`` makes is accepted.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import cast

from .records import TaskInfo

__all__ = ["TaskList", "decode_cursor", "encode_cursor"]

_VERSION = 1
# Real cursors are about 50 characters; anything longer is refused unread.
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")


class TaskList(list[TaskInfo]):
    """What ``TaskManager.list()`` returns: snapshots, newest first, as a list.

    Attributes:
        next_cursor: pass it as ``list(after=...)`` for the next page; None
            when no more tasks match.
    """

    __slots__ = ("next_cursor",)

    def __init__(
        self, infos: Iterable[TaskInfo] = (), next_cursor: str | None = None
    ) -> None:
        super().__init__(infos)
        self.next_cursor = next_cursor


def encode_cursor(epoch: str, seq: int) -> str:
    """Make the cursor text for "tasks older than ``seq``" of registry ``epoch``."""
    raw = json.dumps({"v": _VERSION, "e": epoch, "s": seq}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).rstrip(b"=").decode("ascii")


def decode_cursor(text: object, epoch: str) -> int | None:
    """Return the sequence number in ``text``; None unless a cursor of ``epoch``."""
    if not isinstance(text, str) or _CURSOR.fullmatch(text) is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data: object = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    seq = cast("dict[str, object]", data).get("s") if isinstance(data, dict) else None
    # Only the exact text encode_cursor makes: this checks the version, the
    # epoch and the keys, and refuses padding variants, spaces and key orders.
    if type(seq) is not int or seq < 0 or encode_cursor(epoch, seq) != text:
        return None
    return seq
