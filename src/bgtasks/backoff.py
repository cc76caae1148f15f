"""Backoff strategies for `bgtasks.retry`: how long to wait between attempts.

``exponential()`` with full jitter is the default of ``retry``; ``fixed`` and
``linear`` cover the simpler cases, and any callable ``(attempt) -> seconds``
works too.
"""

from __future__ import annotations

from ._backoff import Backoff, Jitter, exponential, fixed, linear

__all__ = ["Backoff", "Jitter", "exponential", "fixed", "linear"]
