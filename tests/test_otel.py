"""BgtasksInstrumentor: one span per task run, events, metrics and log ids.

Everything goes to the SDK's in-memory span exporter and metric reader; each
test runs on asyncio and trio.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import pytest

pytest.importorskip("opentelemetry.sdk")

from fastapi import BackgroundTasks, FastAPI
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.starlette import StarletteInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

from bgtasks import (
    TaskManager,
    TaskState,
    _observe,
    idempotent,
    logged,
    retry,
    timeout,
)
from bgtasks.fastapi import TrackedTasks, lifespan
from bgtasks.otel import BgtasksInstrumentor
from bgtasks.testing import fresh_idempotency_store, instant_retries

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.anyio


@dataclass
class Telemetry:
    """The in-memory ends of the providers the instrumentor was given."""

    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def points(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        """The data points of metric ``name``, keyed by their sorted attributes."""
        found: dict[tuple[tuple[str, Any], ...], Any] = {}
        data = self.metrics.get_metrics_data()
        if data is None:
            return found
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        for point in metric.data.data_points:
                            key = tuple(sorted((point.attributes or {}).items()))
                            found[key] = point
        return found

    def counts(self, name: str) -> dict[tuple[tuple[str, Any], ...], Any]:
        return {k: p.value for k, p in self.points(name).items()}


def name_key(name: str, outcome: str | None = None) -> tuple[tuple[str, Any], ...]:
    attributes = {"bgtasks.task.name": name}
    if outcome is not None:
        attributes["bgtasks.task.outcome"] = outcome
    return tuple(sorted(attributes.items()))


@pytest.fixture
def otel() -> Iterator[Telemetry]:
    """Instrument bgtasks into in-memory exporters for one test."""
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    BgtasksInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    try:
        yield Telemetry(spans, reader, tracer_provider)
    finally:
        BgtasksInstrumentor().uninstrument()
        meter_provider.shutdown()


def task_spans(otel: Telemetry) -> list[ReadableSpan]:
    """The spans that carry a bgtasks task id."""
    return [s for s in otel.finished() if "bgtasks.task.id" in (s.attributes or {})]


async def ok() -> str:
    return "ok"


def sync_ok() -> str:
    return "ok"


async def bad() -> None:
    raise ValueError("customer 42's secret")


# -- the instrumentor -------------------------------------------------------


def test_importing_bgtasks_imports_no_opentelemetry() -> None:
    """``import bgtasks`` (and its manager and decorators) never loads opentelemetry."""
    # Not bgtasks.fastapi: recent FastAPI releases import opentelemetry themselves.
    code = (
        "import sys, bgtasks, bgtasks.starlette, bgtasks.testing; "
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_instrument_sets_and_clears_the_hook() -> None:
    """instrument() installs the observer; uninstrument() leaves bgtasks untouched."""
    assert current_hook() is None
    BgtasksInstrumentor().instrument(tracer_provider=TracerProvider())
    try:
        assert current_hook() is not None
        assert BgtasksInstrumentor() is BgtasksInstrumentor()  # the base's singleton
    finally:
        BgtasksInstrumentor().uninstrument()
    assert current_hook() is None


def current_hook() -> object:
    """The hook now (a call, so type checkers do not narrow it across calls)."""
    return _observe.hook


def test_bad_option_fails_naming_it() -> None:
    """A non-bool record_exception_messages fails at once, saying what it takes."""
    with pytest.raises(TypeError, match="record_exception_messages must be True or"):
        BgtasksInstrumentor().instrument(record_exception_messages="yes")  # type: ignore[arg-type]
    assert _observe.hook is None


def test_entry_point_is_registered() -> None:
    """opentelemetry-instrument finds the instrumentor under its entry point group."""
    assert bgtasks_entry_point().load() is BgtasksInstrumentor


def bgtasks_entry_point() -> Any:
    """The ``bgtasks`` entry point of the ``opentelemetry_instrumentor`` group."""
    from importlib.metadata import entry_points

    group = entry_points(group="opentelemetry_instrumentor")
    (point,) = [e for e in group if e.name == "bgtasks"]
    return point


def test_auto_instrumentation_turns_it_on() -> None:
    """opentelemetry-instrument's distro loads the entry point and instruments."""
    # mypy sees no names in opentelemetry.instrumentation (as in bgtasks._otel).
    from opentelemetry.instrumentation.distro import (  # type: ignore[attr-defined]
        DefaultDistro,
    )

    DefaultDistro().load_instrumentor(
        bgtasks_entry_point(), raise_exception_on_conflict=True
    )
    try:
        assert current_hook() is not None
    finally:
        BgtasksInstrumentor().uninstrument()


# -- task spans ---------------------------------------------------------------


# Not named "func": anyio 4.11's pytest plugin takes that name for itself.
@pytest.mark.parametrize("target", [ok, sync_ok], ids=["async", "sync"])
async def test_one_span_per_task_linked_to_the_submitter(
    otel: Telemetry, target: Any
) -> None:
    """A task's span is a new root named after it, linked to the submitting span."""
    tracer = otel.tracer_provider.get_tracer("test")
    async with TaskManager() as manager:
        with tracer.start_as_current_span("request") as request:
            handle = manager.spawn(target)
        info = await handle.wait(timeout=5)
    (span,) = task_spans(otel)
    assert span.name == info.name
    assert span.kind is SpanKind.INTERNAL
    assert span.parent is None  # not a child of the (ended) request span
    assert span.context is not None
    assert span.context.trace_id != request.get_span_context().trace_id
    assert [link.context for link in span.links] == [request.get_span_context()]
    assert dict(span.attributes or {}) == {
        "bgtasks.task.id": info.id,
        "bgtasks.task.name": info.name,
        "bgtasks.task.attempt": 1,
        "bgtasks.task.outcome": "succeeded",
    }
    assert span.status.status_code is StatusCode.UNSET


async def test_task_without_a_current_span_has_no_link(otel: Telemetry) -> None:
    """A task submitted outside any span gets a root span without links."""
    async with TaskManager() as manager:
        await manager.spawn(ok).wait(timeout=5)
    (span,) = task_spans(otel)
    assert list(span.links) == []


async def test_failure_records_the_type_not_the_message(otel: Telemetry) -> None:
    """A failed task's span has error.type and ERROR status, never the message."""
    async with TaskManager(log_failures=False) as manager:
        info = await manager.spawn(bad).wait(timeout=5)
    assert info.state is TaskState.FAILED
    (span,) = task_spans(otel)
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "ValueError"
    assert attributes["bgtasks.task.outcome"] == "failed"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description is None
    assert [dict(e.attributes or {}) for e in span.events] == [
        {"exception.type": "ValueError"}
    ]
    assert "secret" not in repr(span.to_json())


async def test_messages_are_recorded_when_asked() -> None:
    """With record_exception_messages=True the exception event has the message."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    BgtasksInstrumentor().instrument(
        tracer_provider=provider, record_exception_messages=True
    )
    try:
        async with TaskManager(log_failures=False) as manager:
            await manager.spawn(bad).wait(timeout=5)
    finally:
        BgtasksInstrumentor().uninstrument()
    (span,) = spans.get_finished_spans()
    (event,) = span.events
    assert event.name == "exception"
    assert (event.attributes or {})["exception.message"] == "customer 42's secret"
    assert span.status.description == "customer 42's secret"


async def test_cancelled_task_is_not_an_error(otel: Telemetry) -> None:
    """A task cancelled while it runs ends its span as cancelled, status unset."""
    started = anyio.Event()

    async def forever() -> None:
        started.set()
        await anyio.sleep_forever()

    async with TaskManager() as manager:
        handle = manager.spawn(forever)
        await started.wait()
        await handle.cancel()
        info = await handle.wait(timeout=5)
    assert info.state is TaskState.CANCELLED
    (span,) = task_spans(otel)
    assert (span.attributes or {})["bgtasks.task.outcome"] == "cancelled"
    assert "error.type" not in (span.attributes or {})
    assert span.status.status_code is StatusCode.UNSET


async def test_spans_and_logs_join(
    otel: Telemetry, records: list[logging.LogRecord]
) -> None:
    """logged's records inside a task carry its span's trace_id and span_id."""
    task = logged(ok)
    async with TaskManager() as manager:
        await manager.spawn(task).wait(timeout=5)
    (span,) = task_spans(otel)
    assert span.context is not None
    mine = [r for r in records if getattr(r, "task_name", None) == task.__qualname__]
    assert len(mine) == 2  # started, succeeded
    for record in mine:
        assert record.trace_id == format(span.context.trace_id, "032x")  # type: ignore[attr-defined]
        assert record.span_id == format(span.context.span_id, "016x")  # type: ignore[attr-defined]


async def test_logs_carry_no_ids_when_not_instrumented(
    records: list[logging.LogRecord],
) -> None:
    """Without the instrumentor, logged's records are as they always were."""
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("mine"):
        await logged(ok)()
    assert records
    assert not any(hasattr(r, "trace_id") for r in records)


# -- the decorators -----------------------------------------------------------


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_retries_are_span_events(otel: Telemetry, kind: str) -> None:
    """Each retry is an event (attempt, delay, type) on the task's span, and counted."""
    calls: list[int] = []

    def flaky_sync() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("host 10.0.0.1 refused")
        return "ok"

    async def flaky_async() -> str:
        return flaky_sync()

    task: Any = retry(attempts=3, backoff=0.5)(
        flaky_async if kind == "async" else flaky_sync
    )
    with instant_retries():
        async with TaskManager() as manager:
            info = await manager.spawn(task).wait(timeout=5)
    assert info.state is TaskState.SUCCEEDED
    (span,) = task_spans(otel)
    assert (span.attributes or {})["bgtasks.task.attempt"] == 3
    retries = [e for e in span.events if e.name == "bgtasks.retry"]
    assert [dict(e.attributes or {}) for e in retries] == [
        {
            "bgtasks.retry.attempt": n,
            "bgtasks.retry.delay": 0.5,
            "exception.type": "ConnectionError",
        }
        for n in (1, 2)
    ]
    assert otel.counts("bgtasks.task.retries") == {name_key(task.__qualname__): 2}


async def test_timeout_is_recorded(otel: Telemetry) -> None:
    """A timeout adds an event and fails the task's span with TimeoutError."""

    @timeout(0.01)
    async def slow() -> None:
        await anyio.sleep_forever()

    async with TaskManager(log_failures=False) as manager:
        await manager.spawn(slow).wait(timeout=5)
    (span,) = task_spans(otel)
    assert (span.attributes or {})["error.type"] == "TimeoutError"
    (event,) = [e for e in span.events if e.name == "bgtasks.timeout"]
    assert (event.attributes or {})["bgtasks.timeout.seconds"] == 0.01
    assert otel.counts("bgtasks.task.timeouts") == {name_key(slow.__qualname__): 1}


def test_sync_checkpoint_timeout_is_recorded(otel: Telemetry) -> None:
    """A sync task's checkpoint() past its deadline records the timeout too."""
    from bgtasks import checkpoint

    tracer = otel.tracer_provider.get_tracer("test")

    @timeout(0.001)
    def slow() -> None:
        import time

        time.sleep(0.01)
        checkpoint()

    with tracer.start_as_current_span("caller"), pytest.raises(TimeoutError):
        slow()
    (span,) = otel.finished()
    assert [e.name for e in span.events] == ["bgtasks.timeout"]


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_idempotency_hits_and_misses(otel: Telemetry, kind: str) -> None:
    """The first call of a key is a miss, the next ones hits; both are counted."""

    def send_sync(user: int) -> str:
        return f"sent {user}"

    async def send_async(user: int) -> str:
        return f"sent {user}"

    body: Any = send_async if kind == "async" else send_sync
    task: Any = idempotent(key=lambda user: f"u{user}")(body)
    with fresh_idempotency_store():
        async with TaskManager() as manager:
            for _ in range(3):
                await manager.spawn(task, 7).wait(timeout=5)
    name = task.__qualname__
    assert otel.counts("bgtasks.idempotency.misses") == {name_key(name): 1}
    hit = tuple(
        sorted(
            {**dict(name_key(name)), "bgtasks.idempotency.outcome": "replayed"}.items()
        )
    )
    assert otel.counts("bgtasks.idempotency.hits") == {hit: 2}
    said = [
        (e.attributes or {})["bgtasks.idempotency.outcome"]
        for s in task_spans(otel)
        for e in s.events
    ]
    assert sorted(map(str, said)) == ["ran", "replayed", "replayed"]


async def test_idempotency_waits_are_counted(otel: Telemetry) -> None:
    """A duplicate that waits for the running call counts as a wait."""
    release = anyio.Event()
    entered = anyio.Event()

    @idempotent(key="k", on_duplicate="wait")
    async def once() -> str:
        entered.set()
        await release.wait()
        return "done"

    with fresh_idempotency_store():
        async with TaskManager() as manager:
            first = manager.spawn(once)
            await entered.wait()
            second = manager.spawn(once)
            await anyio.sleep(0.01)
            release.set()
            assert (await second.wait(timeout=5)).result == "done"
            await first.wait(timeout=5)
    name = once.__qualname__
    assert otel.counts("bgtasks.idempotency.waits") == {name_key(name): 1}
    assert otel.counts("bgtasks.idempotency.misses") == {name_key(name): 1}


async def test_idempotency_skips_are_hits(otel: Telemetry) -> None:
    """A duplicate skipped while the first call runs counts as a hit, "skipped"."""
    release = anyio.Event()
    entered = anyio.Event()

    @idempotent(key="k", on_duplicate="skip")
    async def once() -> str:
        entered.set()
        await release.wait()
        return "done"

    with fresh_idempotency_store():
        async with anyio.create_task_group() as tg:
            tg.start_soon(once)
            await entered.wait()
            assert await once() is None
            release.set()
    skipped = tuple(
        sorted(
            {
                **dict(name_key(once.__qualname__)),
                "bgtasks.idempotency.outcome": "skipped",
            }.items()
        )
    )
    assert otel.counts("bgtasks.idempotency.hits") == {skipped: 1}


def test_sync_overrun_is_recorded(otel: Telemetry) -> None:
    """A sync function that returns after its deadline records the timeout."""
    import time

    tracer = otel.tracer_provider.get_tracer("test")

    @timeout(0.001)
    def late() -> str:
        time.sleep(0.01)
        return "kept"

    with tracer.start_as_current_span("caller"):
        assert late() == "kept"
    (span,) = otel.finished()
    assert [e.name for e in span.events] == ["bgtasks.timeout"]


async def test_rejected_result_retry_has_no_exception_type(otel: Telemetry) -> None:
    """A retry asked by retry_if (no exception) has no exception.type."""
    results = iter([None, "ok"])

    @retry(attempts=2, backoff=0, retry_if=lambda result: result is None)
    async def poll() -> str | None:
        return next(results)

    async with TaskManager() as manager:
        await manager.spawn(poll).wait(timeout=5)
    (span,) = task_spans(otel)
    (event,) = span.events
    assert dict(event.attributes or {}) == {
        "bgtasks.retry.attempt": 1,
        "bgtasks.retry.delay": 0.0,
    }


async def test_task_started_before_instrument_has_no_span(otel: Telemetry) -> None:
    """A task already running when instrument() is called ends without a span."""
    BgtasksInstrumentor().uninstrument()
    started, release = anyio.Event(), anyio.Event()

    async def waits() -> str:
        started.set()
        await release.wait()
        return "done"

    async with TaskManager() as manager:
        handle = manager.spawn(waits)
        await started.wait()
        BgtasksInstrumentor().instrument(tracer_provider=otel.tracer_provider)
        release.set()
        assert (await handle.wait(timeout=5)).result == "done"
    assert task_spans(otel) == []


# -- metrics ------------------------------------------------------------------


async def test_task_metrics(otel: Telemetry) -> None:
    """Duration and finished by name and outcome; running and pending back to 0."""
    gate = anyio.Event()
    async with TaskManager(max_concurrency=1, log_failures=False) as manager:
        blocker = manager.spawn(gate.wait)
        queued = manager.spawn(ok)
        await anyio.sleep(0.01)
        ok_name = ok.__qualname__
        assert otel.counts("bgtasks.task.pending")[name_key(ok_name)] == 1
        await queued.cancel()  # never ran: counted, no span, no duration
        gate.set()
        wait_name = (await blocker.wait(timeout=5)).name
        await manager.spawn(ok).wait(timeout=5)
        await manager.spawn(bad).wait(timeout=5)
    bad_name = bad.__qualname__
    assert otel.counts("bgtasks.task.finished") == {
        name_key(wait_name, "succeeded"): 1,
        name_key(ok_name, "cancelled"): 1,
        name_key(ok_name, "succeeded"): 1,
        name_key(bad_name, "failed"): 1,
    }
    durations = otel.points("bgtasks.task.duration")
    assert {k: p.count for k, p in durations.items()} == {
        name_key(wait_name, "succeeded"): 1,
        name_key(ok_name, "succeeded"): 1,
        name_key(bad_name, "failed"): 1,
    }
    assert set(otel.counts("bgtasks.task.running").values()) == {0}
    assert set(otel.counts("bgtasks.task.pending").values()) == {0}
    assert len(task_spans(otel)) == 3


async def test_nothing_is_recorded_after_uninstrument(otel: Telemetry) -> None:
    """Once uninstrumented, tasks make no spans at all."""
    BgtasksInstrumentor().uninstrument()
    async with TaskManager() as manager:
        await manager.spawn(ok).wait(timeout=5)
    BgtasksInstrumentor().instrument(tracer_provider=otel.tracer_provider)
    assert task_spans(otel) == []


# -- with FastAPI's instrumentation -----------------------------------------


Backend = Literal["asyncio", "trio"]


@pytest.fixture
def backend(anyio_backend: str) -> Backend:
    return "trio" if anyio_backend == "trio" else "asyncio"


@pytest.fixture
def fastapi_otel(otel: Telemetry) -> Iterator[Telemetry]:
    """The apps below get FastAPI's instrumentation too, into the same exporter."""
    yield otel
    for app in _apps:
        FastAPIInstrumentor.uninstrument_app(app)
    _apps.clear()


_apps: list[FastAPI] = []


def _app(manager: TaskManager, plain: Any, otel: Telemetry) -> FastAPI:
    app = FastAPI(lifespan=lifespan(manager))
    FastAPIInstrumentor.instrument_app(app, tracer_provider=otel.tracer_provider)
    _apps.append(app)

    @app.post("/tracked")
    async def tracked(tasks: TrackedTasks) -> dict[str, str]:
        return {"id": tasks.add_task(ok).id}

    @app.post("/tracked-sync")
    async def tracked_sync(tasks: TrackedTasks) -> dict[str, str]:
        return {"id": tasks.add_task(sync_ok).id}

    @app.post("/spawned")
    async def spawned() -> dict[str, str]:
        return {"id": manager.spawn(ok).id}

    @app.post("/plain")
    async def plain_task(background_tasks: BackgroundTasks) -> None:
        background_tasks.add_task(plain)

    return app


def test_add_task_has_one_span_with_fastapi_instrumented(
    fastapi_otel: Telemetry, backend: Backend
) -> None:
    """One span per tracked task, bgtasks' own, linked to its request's span."""
    manager = TaskManager()
    with TestClient(_app(manager, ok, fastapi_otel), backend=backend) as client:
        ids = [client.post(path).json()["id"] for path in ("/tracked", "/tracked-sync")]
    spans = fastapi_otel.finished()
    assert not [s for s in spans if s.name.startswith("BackgroundTask")]
    mine = task_spans(fastapi_otel)
    assert {s.instrumentation_scope.name for s in mine if s.instrumentation_scope} == {
        "bgtasks"
    }
    assert sorted(str((s.attributes or {})["bgtasks.task.id"]) for s in mine) == sorted(
        ids
    )
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert len(servers) == 2
    server_traces = {s.context.trace_id for s in servers if s.context is not None}
    for span in mine:
        # A trace of its own, linked to the request that added it.
        assert span.parent is None
        (link,) = span.links
        assert link.context.trace_id in server_traces
        assert (span.attributes or {})["bgtasks.task.outcome"] == "succeeded"


def test_spawned_task_is_linked_to_the_request(
    fastapi_otel: Telemetry, backend: Backend
) -> None:
    """A task spawned in a request gets its own trace, linked to the request span."""
    manager = TaskManager()
    with TestClient(_app(manager, ok, fastapi_otel), backend=backend) as client:
        task_id = client.post("/spawned").json()["id"]
        assert client.portal is not None
        info = client.portal.call(manager.wait, task_id)
    assert info.state is TaskState.SUCCEEDED
    (span,) = task_spans(fastapi_otel)
    assert span.parent is None
    (link,) = span.links
    servers = [s for s in fastapi_otel.finished() if s.kind is SpanKind.SERVER]
    assert servers[0].context is not None
    assert link.context.trace_id == servers[0].context.trace_id


def test_add_task_under_starlettes_instrumentation(
    otel: Telemetry, backend: Backend
) -> None:
    """Starlette's instrumentation makes no task span: ours, linked to the request."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from bgtasks.starlette import TrackedBackgroundTasks
    from bgtasks.starlette import lifespan as starlette_lifespan

    manager = TaskManager()

    async def endpoint(request: Request) -> JSONResponse:
        tasks = TrackedBackgroundTasks(manager)
        handle = tasks.add_task(ok)
        return JSONResponse({"id": handle.id}, background=tasks.background_tasks)

    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        lifespan=starlette_lifespan(manager),
    )
    StarletteInstrumentor.instrument_app(app, tracer_provider=otel.tracer_provider)
    try:
        with TestClient(app, backend=backend) as client:
            task_id = client.post("/").json()["id"]
    finally:
        StarletteInstrumentor.uninstrument_app(app)
    (span,) = task_spans(otel)
    assert (span.attributes or {})["bgtasks.task.id"] == task_id
    assert span.parent is None
    (server,) = [s for s in otel.finished() if s.kind is SpanKind.SERVER]
    assert [link.context for link in span.links] == [server.context]


def test_plain_decorated_task_events_go_to_fastapis_span(
    fastapi_otel: Telemetry, backend: Backend
) -> None:
    """Without a manager, retry events land on FastAPI's BackgroundTask span."""
    calls: list[int] = []

    @retry(attempts=2, backoff=0)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError

    manager = TaskManager()
    with TestClient(_app(manager, flaky, fastapi_otel), backend=backend) as client:
        client.post("/plain")
    (span,) = [
        s for s in fastapi_otel.finished() if s.name.startswith("BackgroundTask")
    ]
    assert [e.name for e in span.events] == ["bgtasks.retry"]
    assert trace.get_current_span() is trace.INVALID_SPAN


class PaymentDeclinedError(Exception):
    """A user's own exception class: error.type names its module."""


async def test_error_type_is_fully_qualified(otel: Telemetry) -> None:
    """A non-builtin exception's error.type is module.qualname."""

    async def declined() -> None:
        raise PaymentDeclinedError

    async with TaskManager(log_failures=False) as manager:
        await manager.spawn(declined).wait(timeout=5)
    (span,) = task_spans(otel)
    error_type = str((span.attributes or {})["error.type"])
    assert error_type == f"{__name__}.PaymentDeclinedError"


async def test_decorators_outside_any_span_only_count(
    otel: Telemetry, records: list[logging.LogRecord]
) -> None:
    """Without a current span, retries and timeouts are counted, logs get no ids."""
    calls: list[int] = []

    @logged
    @retry(attempts=2, backoff=0)
    async def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError

    @timeout(0.001)
    async def slow() -> None:
        await anyio.sleep_forever()

    await flaky()
    with pytest.raises(TimeoutError):
        await slow()
    assert otel.finished() == []
    assert otel.counts("bgtasks.task.retries") == {name_key(flaky.__qualname__): 1}
    assert otel.counts("bgtasks.task.timeouts") == {name_key(slow.__qualname__): 1}
    assert records
    assert not any(hasattr(r, "trace_id") for r in records)


def test_retry_messages_when_asked() -> None:
    """With record_exception_messages=True a retry event has exception.message."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    calls: list[int] = []

    @retry(attempts=2, backoff=0)
    def flaky() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("host 10.0.0.1 refused")

    BgtasksInstrumentor().instrument(
        tracer_provider=provider, record_exception_messages=True
    )
    try:
        with provider.get_tracer("test").start_as_current_span("caller"):
            flaky()
    finally:
        BgtasksInstrumentor().uninstrument()
    (span,) = spans.get_finished_spans()
    (event,) = span.events
    assert (event.attributes or {})["exception.message"] == "host 10.0.0.1 refused"


def test_missing_extra_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing bgtasks.otel without opentelemetry names the extra to install."""
    import importlib

    for name in [m for m in sys.modules if m.startswith("bgtasks.otel")]:
        monkeypatch.delitem(sys.modules, name)
    for name in [m for m in sys.modules if m.startswith("bgtasks._otel")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    with pytest.raises(ImportError, match=r'pip install "bgtasks\[otel\]"'):
        importlib.import_module("bgtasks.otel")
