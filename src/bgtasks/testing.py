"""PLACEHOLDER: replaced by the helper that owns testing utilities."""

from __future__ import annotations

__all__: list[str] = []
