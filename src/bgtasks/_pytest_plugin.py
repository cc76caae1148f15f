"""The bgtasks pytest plugin: fixtures for users' tests of their own tasks.

pytest imports this module in every run of every project that has bgtasks
installed, so it imports nothing of bgtasks until a test has imported it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from bgtasks import MemoryStore
    from bgtasks.testing import RetryRecorder

__all__ = ["bgtasks_fresh_idempotency", "idempotency_store", "instant_retries"]

KEEP_MARKER = "bgtasks_keep_idempotency"
INI_OPTION = "bgtasks_fresh_idempotency"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ini option that turns the per-test clean store off."""
    parser.addini(
        INI_OPTION,
        type="bool",
        default=True,
        help="bgtasks: give every test an empty default idempotency store "
        "(default true; false lets @idempotent results carry over between tests).",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the opt-out marker, so ``--strict-markers`` accepts it."""
    config.addinivalue_line(
        "markers",
        f"{KEEP_MARKER}: bgtasks: do not empty the default idempotency store "
        "before and after this test.",
    )


@pytest.fixture(autouse=True)
def bgtasks_fresh_idempotency(request: pytest.FixtureRequest) -> Iterator[None]:
    """Empty the default idempotency store before and after every test.

    ``@idempotent`` without ``store=`` records into one process-wide store, so
    without this a test's call would replay the previous test's result. Opt out
    per test with ``@pytest.mark.bgtasks_keep_idempotency``, or for the whole
    suite with ``bgtasks_fresh_idempotency = false`` in the pytest ini options.
    """
    # No bgtasks imported yet means no store to empty, and nothing to import.
    if (
        "bgtasks" not in sys.modules
        or request.node.get_closest_marker(KEEP_MARKER) is not None
        or not request.config.getini(INI_OPTION)
    ):
        yield
        return
    from bgtasks.testing import fresh_idempotency_store  # noqa: PLC0415

    with fresh_idempotency_store():
        yield


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
    Every test gets an empty store anyway; ask for this fixture to use the store
    itself, or to have an empty one in a test marked
    ``bgtasks_keep_idempotency``.
    """
    from bgtasks.testing import fresh_idempotency_store  # noqa: PLC0415

    with fresh_idempotency_store() as store:
        yield store
