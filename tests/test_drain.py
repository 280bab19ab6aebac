"""SIGTERM under load, with a real `modelserve serve` process: readiness turns 503 first, no request in
flight fails, the shutdown runs once, and the process exits 0 within its deadline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from modelserve import testing

MODELSERVE = [sys.executable, "-c", "import sys; from modelserve.cli import main; sys.exit(main())"]
ROOT = Path(__file__).parent.parent
REQUEST = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.1] * 16}]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def slow_repo(root: Path) -> Path:
    """One model whose runs take 150 ms, so there is always work in flight."""
    repo = testing.repository(root, {"slow": {"1": 1}})
    (repo / "slow" / "config.toml").write_text(
        '[serving]\nmax_concurrency = 16\nexecution = "thread"\n'
        '[testing.faults."1"]\nextra_latency_ms = 150\n'
    )
    return repo


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, process.communicate()[0].decode()
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.05)


class LoadBalancer:
    """Clients behind a load balancer: they send requests until the health check says not ready."""

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.ready = True
        self.results: list[tuple[float, float, int | str]] = []  # (sent at, answered at, status or error)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        self.checker = threading.Thread(target=self.check, daemon=True)

    def start(self) -> None:
        for thread in [*self.threads, self.checker]:
            thread.start()

    def check(self) -> None:
        deadline = time.monotonic() + 60
        while self.ready and time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code != 200:
                    self.ready = False
            except httpx.TransportError:
                self.ready = False
            time.sleep(0.05)

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            for _ in range(1000):  # bounded
                if not self.ready:
                    return
                sent = time.monotonic()
                try:
                    outcome: int | str = client.post("/v2/models/slow/infer", json=REQUEST).status_code
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__}: {exc}"
                with self.lock:
                    self.results.append((sent, time.monotonic(), outcome))

    def join(self) -> None:
        for thread in [*self.threads, self.checker]:
            thread.join(timeout=60)


def test_sigterm_under_load_fails_no_request_and_exits_within_the_deadline(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    state = tmp_path / "state"
    command = [
        *MODELSERVE, "serve", str(slow_repo(tmp_path / "models")), "--port", str(port),
        "--state-dir", str(state), "--drain-delay", "1", "--drain-timeout", "10", "--log-level", "info",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(url, process)
        balancer = LoadBalancer(url, clients=8)
        balancer.start()
        deadline = time.monotonic() + 30
        while len(balancer.results) < 40:  # under load: every client has finished a few requests
            assert time.monotonic() < deadline
            time.sleep(0.02)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=1 + 10 + 15)[0].decode()
        exited = time.monotonic()
        balancer.join()
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    failed = [outcome for _, _, outcome in balancer.results if outcome != 200]
    in_flight = [sent for sent, answered, _ in balancer.results if sent < signalled < answered]
    assert failed == [], output
    assert in_flight, "no request was in flight at SIGTERM: the test did not test the drain"
    assert process.returncode == 0, output
    assert exited - signalled < 1 + 10 + 5, "the drain took longer than its deadline"
    assert output.count("Waiting for application shutdown") == 1  # the shutdown (state writes) ran once
    assert output.count("draining") >= 1
    assert (state / "audit.0.json").is_file()  # the audit log was written before exiting
