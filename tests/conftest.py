"""Shared fixtures: tiny real ONNX repositories and a real uvicorn server on a loopback socket."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from starlette.types import ASGIApp

from modelserve import testing


@dataclass
class RunningServer:
    url: str
    host: str
    port: int
    server: uvicorn.Server

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"


@contextlib.contextmanager
def serve(app: ASGIApp) -> Iterator[RunningServer]:
    """Run `app` on uvicorn in a thread, on a free loopback port, until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("server thread died during startup")
        if time.monotonic() > deadline:
            raise TimeoutError("server did not start")
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{port}", "127.0.0.1", port, server)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


@pytest.fixture
def model_repo(tmp_path: Path) -> Path:
    """`fraud` with versions 1 and 2 (different weights), `two` (two inputs, two outputs)."""
    root = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    testing.two_in_two_out(root / "two" / "1" / "model.onnx")
    return root
