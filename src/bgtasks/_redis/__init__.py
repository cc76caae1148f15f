"""Everything bgtasks keeps in Redis: client layer, idempotency store, task mirror."""
