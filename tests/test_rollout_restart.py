"""`kill -9` mid-rollout: `modelserve serve` as a real subprocess, restarted on the same state dir."""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from modelserve import testing

TOKEN = "restart-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}
PLAN = {
    "name": "long",
    "interval_s": 0.1,
    "window_s": 60.0,
    # Only the error gate: this test is about durability, and latency gates on a busy machine are noisy.
    "gates": [{"name": "error_rate_absolute", "metric": "error_rate", "mode": "absolute", "threshold": 0.01}],
    "stages": [
        {"name": "canary-30", "weight": 30, "min_duration_s": 600.0, "min_samples": 20},
        {"name": "full", "weight": 100, "min_duration_s": 600.0, "min_samples": 20},
    ],
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(repo: Path, state: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`modelserve serve` in a subprocess; yields it once /v2/health/ready answers 200."""
    port = _free_port()
    command = [sys.executable, "-m", "modelserve.cli", "serve", str(repo), "--port", str(port)]
    command += ["--state-dir", str(state), "--admin-token", TOKEN, "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not become ready"
            time.sleep(0.05)
        yield process, url
    finally:
        if process.poll() is None:
            process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{url}{path}", json=body, headers=AUTH, timeout=30)
    assert response.status_code < 400, response.text
    return response.json()


def drive(url: str, requests: int) -> Counter[str]:
    """Sequential real requests with random targeting keys; counts the versions that answered."""
    rng = random.Random(requests)
    versions: Counter[str] = Counter()
    with httpx.Client(timeout=30) as client:
        for _ in range(requests):
            response = client.post(
                f"{url}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": f"u{rng.randrange(10**9)}"}
            )
            assert response.status_code == 200, response.text
            versions[response.headers["x-model-version"]] += 1
    return versions


def rollout(url: str) -> dict[str, Any]:
    return admin(url, "GET", "/admin/models/fraud/rollout")


def test_kill_9_mid_rollout_restarts_into_the_same_live_version_and_the_saved_stage(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    state = tmp_path / "state"

    with serve(repo, state) as (process, url):
        admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": PLAN})
        assert drive(url, 150)["2"] > 0
        deadline = time.monotonic() + 30
        while not any(
            e["kind"] == "gates" and e["gates"][0]["verdict"] == "pass" for e in rollout(url)["events"]
        ):
            assert time.monotonic() < deadline, rollout(url)
            drive(url, 20)
        before = rollout(url)["events"]
        process.kill()  # SIGKILL: no shutdown hook runs
        process.wait(timeout=30)

    with serve(repo, state) as (process, url):
        status = admin(url, "GET", "/admin/models/fraud")
        after = rollout(url)
        served = drive(url, 150)
        process.kill()
        process.wait(timeout=30)

    assert status["live_version"] == "1" and status["candidate"] == "2"
    assert after["rollout"]["state"] == "running" and after["rollout"]["stage"] == "canary-30"
    assert after["events"][: len(before)] == before  # nothing lost up to the last write
    assert after["events"][len(before)]["kind"] == "restored"
    assert served["2"] > 0 and served["1"] > 0  # the 30 % split is back in force

    # The candidate's files vanish while the server is down: it cannot safely resume, so it pauses.
    shutil.rmtree(repo / "fraud" / "2")
    with serve(repo, state) as (_, url):
        status = admin(url, "GET", "/admin/models/fraud")
        paused = rollout(url)
        served = drive(url, 50)
    assert status["live_version"] == "1"
    assert paused["rollout"]["state"] == "paused"
    assert "cannot safely resume after restart: candidate '2' is not ready" in paused["rollout"]["reason"]
    pauses = [e for e in paused["events"] if e["kind"] == "paused"]  # evaluation goes on while paused
    assert len(pauses) == 1 and pauses[0]["message"] == paused["rollout"]["reason"]
    assert served == Counter({"1": 50})
