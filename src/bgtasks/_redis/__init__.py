"""Redis backends: the client layer, the idempotency store, the task mirror."""
