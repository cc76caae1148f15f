"""OpenTelemetry traces and metrics for bgtasks' tasks.

Needs the extra: ``pip install "bgtasks[otel]"``. Then, once at start-up::

    from bgtasks.otel import BgtasksInstrumentor

    BgtasksInstrumentor().instrument()  # the global tracer and meter providers

``opentelemetry-instrument`` finds it through its entry point and does this
itself. Until then bgtasks never imports opentelemetry and pays nothing.
"""

from __future__ import annotations

try:
    from ._otel.instrumentor import BgtasksInstrumentor
except ModuleNotFoundError as _exc:
    if not (_exc.name or "").startswith("opentelemetry"):
        raise
    raise ImportError(
        "bgtasks.otel needs opentelemetry-api and opentelemetry-instrumentation, "
        'which are not installed: pip install "bgtasks[otel]"'
    ) from _exc

__all__ = ["BgtasksInstrumentor"]
