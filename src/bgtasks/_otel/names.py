"""The names of bgtasks' spans' attributes and events, and of its metrics.

No semantic convention covers in-process background tasks (the messaging ones
assume a broker), so bgtasks uses its own ``bgtasks.*`` namespace, and the
conventions' own names where one applies (``error.type``, ``exception.*``).
"""

from __future__ import annotations

from typing import Final

# Span attributes.
TASK_ID: Final = "bgtasks.task.id"
TASK_NAME: Final = "bgtasks.task.name"
TASK_ATTEMPT: Final = "bgtasks.task.attempt"
TASK_OUTCOME: Final = "bgtasks.task.outcome"
ERROR_TYPE: Final = "error.type"
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"

# Span events, and their attributes.
RETRY_EVENT: Final = "bgtasks.retry"
RETRY_ATTEMPT: Final = "bgtasks.retry.attempt"
RETRY_DELAY: Final = "bgtasks.retry.delay"
TIMEOUT_EVENT: Final = "bgtasks.timeout"
TIMEOUT_SECONDS: Final = "bgtasks.timeout.seconds"
IDEMPOTENCY_EVENT: Final = "bgtasks.idempotency"
IDEMPOTENCY_OUTCOME: Final = "bgtasks.idempotency.outcome"

# Metrics (attributes: TASK_NAME, and TASK_OUTCOME where it says so).
TASK_DURATION: Final = "bgtasks.task.duration"
TASKS_FINISHED: Final = "bgtasks.task.finished"
TASKS_RUNNING: Final = "bgtasks.task.running"
TASKS_PENDING: Final = "bgtasks.task.pending"
TASK_RETRIES: Final = "bgtasks.task.retries"
TASK_TIMEOUTS: Final = "bgtasks.task.timeouts"
IDEMPOTENCY_HITS: Final = "bgtasks.idempotency.hits"
IDEMPOTENCY_MISSES: Final = "bgtasks.idempotency.misses"
IDEMPOTENCY_WAITS: Final = "bgtasks.idempotency.waits"
