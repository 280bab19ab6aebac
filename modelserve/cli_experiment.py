"""`modelserve experiment ...` commands (admin API clients)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the experiment commands to the `modelserve` parser."""
