"""``BgtasksInstrumentor``: OpenTelemetry spans and metrics for bgtasks' tasks."""

from __future__ import annotations

from collections.abc import Collection
from importlib.metadata import version
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace

# mypy finds no BaseInstrumentor there (the module is partly untyped).
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)

from .. import _observe
from .observer import OtelObserver

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

__all__ = ["BgtasksInstrumentor"]


class BgtasksInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """Trace and measure bgtasks' tasks, as every opentelemetry-instrumentation does.

    ``BgtasksInstrumentor().instrument()`` turns it on for the whole process
    (one instance: the base class makes it a singleton), ``uninstrument()``
    turns it off. ``opentelemetry-instrument`` calls ``instrument()`` itself,
    through the ``opentelemetry_instrumentor`` entry point.

    Each task the ``TaskManager`` runs gets one span, named after the task, in a
    trace of its own and linked to the span that was current when it was
    submitted. Retries, timeouts and idempotent outcomes are events on the
    current span. Argument values are never recorded; exception messages only
    with ``record_exception_messages=True``. See the "OpenTelemetry" docs page
    for every span attribute, event and metric.

    Examples:
        >>> from bgtasks.otel import BgtasksInstrumentor
        >>> BgtasksInstrumentor().instrument()
        >>> BgtasksInstrumentor().uninstrument()
    """

    def instrumentation_dependencies(self) -> Collection[str]:
        """Return the packages instrumented: none besides bgtasks itself."""
        return ()

    def instrument(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        record_exception_messages: bool = False,
        **kwargs: Any,
    ) -> None:
        """Turn the instrumentation on (a warning, and nothing else, if it is on).

        Args:
            tracer_provider: where the spans go; the global one by default.
            meter_provider: where the metrics go; the global one by default.
            record_exception_messages: also record exception messages (and
                a failed task's stack trace), which may hold personal data;
                by default only the exceptions' types are recorded.
            **kwargs: what ``BaseInstrumentor.instrument`` takes
                (``skip_dep_check``, ``raise_exception_on_conflict``).

        Raises:
            TypeError: ``record_exception_messages`` is not a bool.
        """
        super().instrument(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            record_exception_messages=_check_flag(record_exception_messages),
            **kwargs,
        )

    def _instrument(self, **kwargs: Any) -> None:
        release = version("bgtasks")
        tracer = trace.get_tracer(
            "bgtasks", release, tracer_provider=kwargs.get("tracer_provider")
        )
        meter = metrics.get_meter(
            "bgtasks", release, meter_provider=kwargs.get("meter_provider")
        )
        _observe.hook = OtelObserver(
            tracer,
            meter,
            record_exception_messages=kwargs.get("record_exception_messages", False),
        )

    def _uninstrument(self, **kwargs: Any) -> None:
        _observe.hook = None


def _check_flag(value: object) -> bool:
    # Checked at run time too: opentelemetry-instrument's callers are untyped.
    if not isinstance(value, bool):
        raise TypeError(
            f"record_exception_messages must be True or False, got {value!r}."
        )
    return value
