"""OpenTelemetry for bgtasks: the instrumentor and the observer it installs.

Only ``bgtasks.otel`` imports this package; ``import bgtasks`` never does, so
opentelemetry stays an optional extra.
"""
