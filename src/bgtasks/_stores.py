"""PLACEHOLDER: replaced by the helper that owns this module."""
from __future__ import annotations
from typing import Any

class IdempotencyStore:
    pass

class MemoryStore:
    pass
