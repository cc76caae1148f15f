"""Everything bgtasks keeps in Redis: the client layer and the stores built on it."""
