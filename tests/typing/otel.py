"""Checked by mypy and pyright, never run: BgtasksInstrumentor's typed options."""

# pyright: reportUnnecessaryTypeIgnoreComment=true

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider
from typing_extensions import assert_type

from bgtasks.otel import BgtasksInstrumentor

instrumentor = BgtasksInstrumentor()
assert_type(
    instrumentor.instrument(
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(),
        record_exception_messages=True,
    ),
    None,
)
instrumentor.instrument()
instrumentor.instrument(record_exception_messages="yes")  # type: ignore[arg-type]
instrumentor.uninstrument()
