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


README = Path(__file__).parent.parent / "README.md"


def _readme_workers_example() -> tuple[str, str]:
    """The README's multi-worker app (the python block saved as `workers_app.py`) and its command."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("Save this as `workers_app.py`") :]
    code = section[section.index("```python\n") + len("```python\n") :]
    code = code[: code.index("```")]
    command = section[section.index("```bash\n") + len("```bash\n") :]
    return code, command[: command.index("```")].strip()


def test_the_readme_multi_worker_app_runs_as_written_and_reports_every_workers_requests(
    tmp_path: Path,
) -> None:
    import shlex
    import shutil

    from prometheus_client.parser import text_string_to_metric_families

    code, command = _readme_workers_example()
    (tmp_path / "workers_app.py").write_text(code)
    shutil.copytree(Path(__file__).parent.parent / "examples" / "models", tmp_path / "examples" / "models")
    args = shlex.split(command)
    assert args[0] == "uvicorn" and "--port" in args
    port = free_port()
    args[args.index("--port") + 1] = str(port)  # a free port instead of 8000, as the README test does
    process = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    request = (Path(__file__).parent.parent / "examples" / "req.json").read_bytes()
    metrics = tmp_path / ".modelserve-app" / "metrics"
    try:
        deadline = time.monotonic() + 90
        sent = 0
        while sent < 40 or len(list(metrics.glob("*.metrics.json"))) < 2:
            assert time.monotonic() < deadline and process.poll() is None, "workers did not start"
            try:  # a new connection each time: the kernel spreads them over both workers
                answer = httpx.post(f"{base}/v2/models/credit/infer", content=request, timeout=30)
                sent += answer.status_code == 200
            except httpx.HTTPError:
                time.sleep(0.1)
        assert httpx.get(f"{base}/healthz", timeout=10).json() == {"ok": True}
        deadline = time.monotonic() + 10
        agreeing = 0
        while agreeing < 6:  # scrapes answered by either worker: each reports all the requests
            assert time.monotonic() < deadline, "scrapes did not report every worker's requests"
            text = httpx.get(f"{base}/metrics", timeout=10).text
            total = sum(
                s.value
                for family in text_string_to_metric_families(text)
                if family.name == "modelserve_requests"
                for s in family.samples
                if s.name == "modelserve_requests_total"
            )
            agreeing = agreeing + 1 if total == sent else 0
            time.sleep(0.05 if total == sent else 0.2)
        assert (tmp_path / ".modelserve-app" / "coordinator.db").exists()
    finally:
        stop_pid(process)
