"""``@idempotent``, in the parts a maintainer looks for.

- ``decorator``: ``idempotent`` itself, its options and its wrappers.
- ``keys``: a call's arguments to its key and its argument fingerprint.
- ``policy``: what a call does once its key is known: replay, skip, wait,
  or run and record (or release).
- ``waiting``: the flight board that wakes duplicates across tasks and threads.
- ``stores``: the store protocol, its records and the ``MemoryStore``.

Imports go one way: ``decorator`` -> ``policy`` -> ``waiting``/``stores``/``keys``.
The public names are re-exported by ``bgtasks`` itself, not here.
"""
