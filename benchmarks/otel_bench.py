"""Section 8: what BgtasksInstrumentor costs per task, and per decorated call.

The same workloads with the instrumentor off and on. "On" uses the real SDK:
a TracerProvider whose span processor hands each span to an exporter that
drops it (so export I/O is not measured), and a MeterProvider with an
in-memory reader (never collected during the run). Skipped when the SDK is
not installed (``pip install "bgtasks[otel]" opentelemetry-sdk``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
from _harness import Config, Report, Row, compare_runs, ratio

DRAIN = 600.0


@contextmanager
def _instrumented() -> Iterator[None]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        SimpleSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from bgtasks.otel import BgtasksInstrumentor

    class _Drop(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(_Drop()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    BgtasksInstrumentor().instrument(
        tracer_provider=tracer_provider, meter_provider=meter_provider
    )
    try:
        yield
    finally:
        BgtasksInstrumentor().uninstrument()
        meter_provider.shutdown()
        tracer_provider.shutdown()


def _spawn_run(n: int, backend: str) -> float:
    from bgtasks import TaskManager

    done = [0]

    async def task() -> None:
        done[0] += 1

    async def main() -> float:
        t0 = time.perf_counter()
        async with TaskManager(drain_timeout=DRAIN) as manager:
            for _ in range(n):
                manager.spawn(task)
        return time.perf_counter() - t0

    elapsed = anyio.run(main, backend=backend)
    if done[0] != n:
        raise RuntimeError(f"{done[0]} of {n} tasks ran")
    return elapsed


def _logged_run(n: int) -> float:
    import logging

    from bgtasks import logged

    logger = logging.getLogger("bgtasks.bench.otel")
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    logger.setLevel(logging.INFO)

    @logged(logger=logger)
    def call() -> None:
        return None

    t0 = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - t0


def _on(run: Callable[[], float]) -> Callable[[], float]:
    def instrumented() -> float:
        with _instrumented():
            return run()

    return instrumented


def _pair(
    report: Report,
    cfg: Config,
    section: str,
    run: Callable[[], float],
    n: int,
) -> None:
    off, on = compare_runs(
        report,
        section,
        [("instrumentor off", run), ("instrumentor on (SDK)", _on(run))],
        repeats=cfg.throughput_repeats,
        unit="µs/task",
        convert=lambda seconds: seconds / n * 1e6,
    )
    if off.ok and on.ok:
        assert on.value is not None
        assert off.value is not None
        on.overhead = on.value - off.value
        on.ratio, on.ratio_of = ratio(on.value, off.value), "off"


def run(report: Report, cfg: Config) -> None:
    try:
        import opentelemetry.instrumentation
        import opentelemetry.sdk  # noqa: F401
    except ImportError:
        row = report.add(Row("8. OpenTelemetry", "instrumentor on (SDK)"))
        row.error = "opentelemetry-sdk is not installed"
        return
    n = cfg.throughput_tasks
    for backend in ("asyncio", "trio"):
        _pair(
            report,
            cfg,
            f"8. OpenTelemetry: TaskManager.spawn, {n:,} trivial tasks ({backend})",
            lambda backend=backend: _spawn_run(n, backend),  # type: ignore[misc]
            n,
        )
    _pair(
        report,
        cfg,
        f"8. OpenTelemetry: @logged sync call at INFO, {n:,} calls",
        lambda: _logged_run(n),
        n,
    )
