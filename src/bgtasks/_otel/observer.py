"""What the instrumentor installs as ``bgtasks._observe.hook``: spans and metrics.

Spans come from the manager, one per task run: a new trace root linked to the
span that was current when the task was submitted (a request's span is often
over by the time its task runs, and a child must not outlive its parent).
FastAPI's instrumentation makes a span per plain ``BackgroundTask``; bgtasks'
own ``TrackedTask`` runs itself, so it gets none. Only when a
``BackgroundTasks`` subclass nests the task in a plain ``BackgroundTask`` does
FastAPI's span appear, and the task takes that span over: one span per task.
The decorators only add events to whatever span is current, so they
work on a manager's task span, on FastAPI's, or on one of the caller's.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterable
from contextvars import Context, ContextVar, Token
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from starlette.background import BackgroundTask

from .._manager.records import TaskRecord, TaskState
from .._observe import IdempotencyOutcome
from . import names

if TYPE_CHECKING:
    from opentelemetry.metrics import Meter
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from .._retry_policy import RetryEvent

__all__ = ["OtelObserver"]

# Seconds; the semantic conventions' advice for durations of operations.
_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
    300.0,
)


# The words ``logged`` uses for the same outcomes.
_SAID: dict[IdempotencyOutcome, str] = {
    "hit": "replayed",
    "miss": "ran",
    "wait": "waited",
    "skip": "skipped",
}


class _TaskSpan:
    """The span of the task running in this context, and how to leave it."""

    __slots__ = ("owned", "span", "started", "token")

    def __init__(
        self, span: Span, token: Token[otel_context.Context], *, owned: bool
    ) -> None:
        self.span = span
        self.token = token
        self.owned = owned  # False: FastAPI's BackgroundTask span, FastAPI ends it
        self.started = time.perf_counter()


# Set in a task's own context while it runs (read back when it ends).
_task_span: ContextVar[_TaskSpan | None] = ContextVar("bgtasks.otel.span", default=None)
# Set in an add_task task's captured context: the span FastAPI opened around it.
_outer_span: ContextVar[Span | None] = ContextVar("bgtasks.otel.outer", default=None)


def _fastapi_wraps_background_tasks() -> bool:
    """Tell whether FastAPI's instrumentation opens a span per ``BackgroundTask``."""
    return hasattr(BackgroundTask, "_otel_original_call")


def _error_type(exc: BaseException) -> str:
    """Name an exception's class as ``error.type`` asks: fully qualified."""
    kind = type(exc)
    module = kind.__module__
    if module == "builtins":
        return kind.__qualname__
    return f"{module}.{kind.__qualname__}"


class _Counts:
    """Tasks per name now, for an observable up-down counter (thread-safe)."""

    __slots__ = ("_lock", "_values")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, delta: int) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + delta

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            values = list(self._values.items())
        return [Observation(n, {names.TASK_NAME: name}) for name, n in values]


class OtelObserver:
    """Make spans, span events and metrics of what bgtasks tells it."""

    def __init__(
        self, tracer: Tracer, meter: Meter, *, record_exception_messages: bool
    ) -> None:
        self._tracer = tracer
        self._messages = record_exception_messages
        self._by_name: dict[str, dict[str, AttributeValue]] = {}
        self._by_outcome: dict[tuple[str, str], dict[str, AttributeValue]] = {}
        self._duration = meter.create_histogram(
            names.TASK_DURATION,
            unit="s",
            description="How long task runs took, by task name and outcome.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._finished = meter.create_counter(
            names.TASKS_FINISHED,
            unit="{task}",
            description="Tasks that reached a final state, by name and outcome.",
        )
        # Observed when the reader collects: a dict update per change instead
        # of an SDK measurement (several µs) four times per task.
        self._running = _Counts()
        self._pending = _Counts()
        meter.create_observable_up_down_counter(
            names.TASKS_RUNNING,
            callbacks=[self._running.observe],
            unit="{task}",
            description="Tasks running now.",
        )
        meter.create_observable_up_down_counter(
            names.TASKS_PENDING,
            callbacks=[self._pending.observe],
            unit="{task}",
            description="Tasks submitted and not started yet.",
        )
        self._retries = meter.create_counter(
            names.TASK_RETRIES,
            unit="{retry}",
            description="Failed attempts that bgtasks.retry retried.",
        )
        self._timeouts = meter.create_counter(
            names.TASK_TIMEOUTS,
            unit="{timeout}",
            description="Deadlines of bgtasks.timeout that passed.",
        )
        self._hits = meter.create_counter(
            names.IDEMPOTENCY_HITS,
            unit="{call}",
            description="Idempotent calls that replayed or skipped a recorded key.",
        )
        self._misses = meter.create_counter(
            names.IDEMPOTENCY_MISSES,
            unit="{call}",
            description="Idempotent calls whose body ran.",
        )
        self._waits = meter.create_counter(
            names.IDEMPOTENCY_WAITS,
            unit="{call}",
            description="Idempotent calls that waited for a running duplicate.",
        )

    def _name(self, name: str) -> dict[str, AttributeValue]:
        # Task names are few (low cardinality): one attribute dict each.
        attributes = self._by_name.get(name)
        if attributes is None:
            attributes = self._by_name[name] = {names.TASK_NAME: name}
        return attributes

    def _outcome(self, name: str, outcome: str) -> dict[str, AttributeValue]:
        key = (name, outcome)
        attributes = self._by_outcome.get(key)
        if attributes is None:
            attributes = self._by_outcome[key] = {
                names.TASK_NAME: name,
                names.TASK_OUTCOME: outcome,
            }
        return attributes

    # -- the manager ------------------------------------------------------

    def task_submitted(self, record: TaskRecord) -> None:
        """Count a new PENDING task."""
        self._pending.add(record.name, 1)

    def task_dropped(self, record: TaskRecord) -> None:
        """Count a PENDING task cancelled before it ran (it has no span)."""
        self._pending.add(record.name, -1)
        self._finished.add(1, self._outcome(record.name, "cancelled"))

    def external_run(self, context: Context) -> None:
        """Hand FastAPI's span around an ``add_task`` task to the task's context."""
        if not _fastapi_wraps_background_tasks():
            return
        span = trace.get_current_span()
        # Only FastAPI's own span around this very task: bgtasks' TrackedTask
        # runs itself, so FastAPI wraps it only when a BackgroundTasks subclass
        # with its own add_task nested it in a plain BackgroundTask. The span
        # current otherwise (the request's) is never taken over.
        if span.is_recording() and getattr(span, "name", "").startswith(
            "BackgroundTask "
        ):
            context.run(_outer_span.set, span)

    def task_started(self, record: TaskRecord) -> None:
        """Open (or take over) the task's span and make it current."""
        self._pending.add(record.name, -1)
        self._running.add(record.name, 1)
        span_attributes: dict[str, AttributeValue] = {
            names.TASK_ID: record.id,
            names.TASK_NAME: record.name,
        }
        outer = _outer_span.get()
        if outer is not None:
            _outer_span.set(None)  # tasks this one submits get their own span
            outer.update_name(record.name)
            outer.set_attributes(span_attributes)
            span, owned = outer, False
        else:
            # The submitter's span, captured with the task's context: a link,
            # not a parent, in a trace of its own.
            submitter = trace.get_current_span().get_span_context()
            span = self._tracer.start_span(
                record.name,
                context=otel_context.Context(),
                kind=SpanKind.INTERNAL,
                attributes=span_attributes,
                links=[Link(submitter)] if submitter.is_valid else None,
            )
            owned = True
        token = otel_context.attach(trace.set_span_in_context(span))
        _task_span.set(_TaskSpan(span, token, owned=owned))

    def task_ended(self, record: TaskRecord) -> None:
        """Record the outcome on the task's span, end it, and count the run."""
        current = _task_span.get()
        if current is None:
            return  # started before instrument() was called
        _task_span.set(None)
        span = current.span
        state = record.state
        outcome = state.value
        span.set_attributes(
            {names.TASK_ATTEMPT: record.attempt, names.TASK_OUTCOME: outcome}
        )
        if state is TaskState.FAILED:
            exc = sys.exc_info()[1]
            error_type = "unknown" if exc is None else _error_type(exc)
            span.set_attribute(names.ERROR_TYPE, error_type)
            if self._messages and exc is not None:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
            else:
                span.add_event("exception", {names.EXCEPTION_TYPE: error_type})
                span.set_status(Status(StatusCode.ERROR))
        # A cancelled task is no error: its status stays unset.
        otel_context.detach(current.token)
        if current.owned:
            span.end()
        self._running.add(record.name, -1)
        outcome_attributes = self._outcome(record.name, outcome)
        self._finished.add(1, outcome_attributes)
        self._duration.record(time.perf_counter() - current.started, outcome_attributes)

    # -- the decorators ---------------------------------------------------

    def retried(self, event: RetryEvent) -> None:
        """Add a retry event to the current span and count the retry."""
        self._retries.add(1, self._name(event.name))
        span = trace.get_current_span()
        if not span.is_recording():
            return
        attributes: dict[str, AttributeValue] = {
            names.RETRY_ATTEMPT: event.attempt,
            names.RETRY_DELAY: event.delay,
        }
        if event.exception is not None:
            attributes[names.EXCEPTION_TYPE] = _error_type(event.exception)
            if self._messages:
                attributes[names.EXCEPTION_MESSAGE] = str(event.exception)
        span.add_event(names.RETRY_EVENT, attributes)

    def timed_out(self, name: str, seconds: float) -> None:
        """Add a timeout event to the current span and count the timeout."""
        self._timeouts.add(1, self._name(name))
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                names.TIMEOUT_EVENT,
                {names.TASK_NAME: name, names.TIMEOUT_SECONDS: seconds},
            )

    def idempotency(self, name: str, outcome: IdempotencyOutcome) -> None:
        """Count an idempotent call's outcome; note it on the current span."""
        attributes = self._name(name)
        said = _SAID[outcome]
        if outcome == "miss":
            self._misses.add(1, attributes)
        elif outcome == "wait":
            self._waits.add(1, attributes)
        else:
            self._hits.add(1, {**attributes, names.IDEMPOTENCY_OUTCOME: said})
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event(
                names.IDEMPOTENCY_EVENT,
                {names.TASK_NAME: name, names.IDEMPOTENCY_OUTCOME: said},
            )

    def log_fields(self, fields: dict[str, Any]) -> None:
        """Add ``trace_id`` and ``span_id`` (hex) while a span is current."""
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            fields["trace_id"] = format(span_context.trace_id, "032x")
            fields["span_id"] = format(span_context.span_id, "016x")
