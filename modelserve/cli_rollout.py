"""`modelserve rollout ...` commands (admin API clients)."""

from __future__ import annotations

from typing import Any


def register(commands: Any) -> None:
    """Add the rollout commands to the `modelserve` parser."""
