"""The bgtasks pytest plugin: fixtures for users' tests of their own tasks.

pytest imports this module in every run of every project that has bgtasks
installed, so it imports nothing of bgtasks until the fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bgtasks import MemoryStore
    from bgtasks.testing import RetryRecorder

__all__ = ["idempotency_store", "instant_retries"]


@pytest.fixture
def instant_retries() -> Iterator[RetryRecorder]:
    """Make ``bgtasks.retry`` skip its waits during the test; yield the recorder.

    Same as ``with bgtasks.testing.instant_retries():`` around the test: exact
    delays, jitter off. It covers the test function and the tasks and threads it starts;
    async fixtures of a wider scope started earlier do not see it.
    """
    # Imported on use: pytest loads this plugin in every run, used or not.
    from bgtasks.testing import instant_retries as _instant_retries  # noqa: PLC0415

    with _instant_retries() as recorder:
        yield recorder


@pytest.fixture
def idempotency_store() -> Iterator[MemoryStore]:
    """Give the test an empty default idempotency store, emptied again after it.

    Same as ``with bgtasks.testing.fresh_idempotency_store():`` around the test.
    """
    from bgtasks.testing import fresh_idempotency_store  # noqa: PLC0415

    with fresh_idempotency_store() as store:
        yield store
