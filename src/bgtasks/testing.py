"""Helpers for testing code that uses bgtasks: retries without waiting.

Also available as the ``instant_retries`` pytest fixture, registered by the
bgtasks pytest plugin as soon as bgtasks is installed.
"""

from __future__ import annotations

from ._testing import RetryRecorder, instant_retries

__all__ = ["RetryRecorder", "instant_retries"]
