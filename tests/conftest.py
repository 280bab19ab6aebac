"""Shared fixtures: tiny real ONNX repositories and a real uvicorn server on a loopback socket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from modelserve import testing


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """`fraud` with versions 1 and 2 (different weights), `two` (two inputs, two outputs)."""
    root = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    testing.two_in_two_out(root / "two" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A real `redis-server` on a free 127.0.0.1 port for the whole run; fails (never skips) without it."""
    from modelserve.testing_processes import redis_server

    with redis_server() as server:
        yield server.url
