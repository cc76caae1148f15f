"""PLACEHOLDER: replaced by the helper that owns this module."""
from __future__ import annotations
from typing import Any

def timeout(*args: Any, **kwargs: Any) -> Any:
    raise NotImplementedError

def checkpoint() -> None:
    raise NotImplementedError

def remaining() -> Any:
    raise NotImplementedError
