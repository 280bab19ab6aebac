"""An embedded app under `uvicorn --workers 2`: one coordinator URL in ServerConfig, real worker processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx

from modelserve import testing
from modelserve.testing_processes import free_port, stop_pid

APP = """
from pathlib import Path
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
import numpy as np
from modelserve import ModelServe, ServerConfig

HERE = Path(__file__).parent


def make() -> Starlette:  # uvicorn --factory: one app per worker process
    ms = ModelServe(ServerConfig(repository=HERE / "models", state_dir=HERE / "state",
                                 admin_token="t", coordinator=f"sqlite://{HERE / 'coordinator.db'}"))

    async def score(request: Request) -> JSONResponse:
        await ms.predict(request, "fraud", {"input": np.zeros((1, 16), np.float32)})
        return JSONResponse({"version": ms.decision(request, "fraud").version})

    return Starlette(routes=[Route("/score", score, methods=["POST"]), *ms.routes],
                     middleware=ms.middleware, lifespan=ms.lifespan)
"""


def test_an_embedded_app_under_uvicorn_workers_promotes_on_every_worker(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    (tmp_path / "embedded.py").write_text(textwrap.dedent(APP))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "--factory", "embedded:make", "--app-dir", str(tmp_path),
         "--workers", "2", "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    auth = {"authorization": "Bearer t"}
    try:
        deadline = time.monotonic() + 90
        replicas: set[str] = set()
        while len(replicas) < 2:  # both workers up (each names itself host:pid)
            assert time.monotonic() < deadline and process.poll() is None, "workers did not start"
            try:
                status = httpx.get(f"{base}/admin/models/fraud", headers=auth, timeout=5)
                if status.status_code == 200:
                    replicas.add(status.json()["fleet"]["replica"])
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.post(f"{base}/admin/models/fraud/stage", json={"version": "2"}, headers=auth,
                          timeout=60).status_code == 200  # fmt: skip
        promoted = httpx.post(f"{base}/admin/models/fraud/promote", headers=auth, timeout=90)
        assert promoted.status_code == 200, promoted.text
        time.sleep(1.0)  # the documented bound for every worker to apply it
        with httpx.Client(timeout=30) as client:  # new connections: both workers answer some
            versions = {client.post(f"{base}/score", headers={"connection": "close"}).json()["version"]
                        for _ in range(40)}  # fmt: skip
        assert versions == {"2"}
    finally:
        stop_pid(process)
