"""Everything bgtasks keeps in Redis: the client layer, the idempotency store, the task mirror."""
