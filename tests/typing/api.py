"""Checked by mypy and pyright, never run: the public API keeps users' types.

Each decorated function must keep its parameters and return type. Lines
marked with ``assert_type`` fail the type check if a decorator loses them.
"""

from __future__ import annotations
