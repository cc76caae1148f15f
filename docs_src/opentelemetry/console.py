# Spans and metrics of bgtasks' tasks, printed to the console.
# Run it: pip install "bgtasks[otel]" opentelemetry-sdk && python console.py
import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from bgtasks import TaskManager, retry
from bgtasks.otel import BgtasksInstrumentor

tracer_provider = TracerProvider()
tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
# Exported at shutdown here; a real app exports every minute or so.
meter_provider = MeterProvider(
    metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())]
)
BgtasksInstrumentor().instrument(
    tracer_provider=tracer_provider, meter_provider=meter_provider
)

calls: list[int] = []


@retry(attempts=3, backoff=0.01)
async def send_receipt(order_id: int) -> str:
    calls.append(order_id)
    if len(calls) == 1:  # the first attempt fails, the retry succeeds
        raise ConnectionError("the mail server is busy")
    return f"receipt {order_id} sent"


async def main() -> None:
    async with TaskManager() as manager:
        handle = manager.spawn(send_receipt, 42)
        info = await handle.wait()
        print(info.state.value, info.result)
    meter_provider.shutdown()  # prints the metrics


if __name__ == "__main__":
    anyio.run(main)
