"""Helpers for testing code that uses bgtasks, without waiting.

- `instant_retries`: ``bgtasks.retry`` skips its waits and records each retry.
- `ManualClock`: a clock that moves only when told to, for ``MemoryStore(clock=...)``
  and other injectable clocks, so expiry is tested without sleeping.
- `fresh_idempotency_store`: an empty default idempotency store per test.

The pytest plugin that bgtasks installs also provides the ``instant_retries``
and ``idempotency_store`` fixtures, and empties the default idempotency store
around every test (opt out with ``@pytest.mark.bgtasks_keep_idempotency``).
"""

from __future__ import annotations

from ._clock import ManualClock
from ._testing import RetryRecorder, fresh_idempotency_store, instant_retries

__all__ = ["ManualClock", "RetryRecorder", "fresh_idempotency_store", "instant_retries"]
