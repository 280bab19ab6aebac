"""SIGTERM under load, with real `modelserve serve` processes (one, and `--workers 2`): readiness turns
503 first, no request in flight fails, the shutdown runs once per process, and it exits 0 within its
deadline.

Deterministic on a busy host: nothing depends on how fast the test reacts. The drain delay is long,
so the socket stays open until the test has seen readiness turn 503 and its load balancer has
stopped sending; a second SIGTERM then ends the delay (as documented). Requests in flight when the
socket closes are ones the server has confirmed it is running (`in_flight` in the readiness body),
and they take long enough to still be running then.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """`slow`: runs compute 150 ms, so there is always work in flight; `long`: runs compute 600 ms."""
    repo = testing.repository(root, {"slow": {"1": 1}, "long": {"1": 1}})
    for model, latency in (("slow", 150), ("long", 600)):
        (repo / model / "config.toml").write_text(
            f'[serving]\nmax_concurrency = 16\nexecution = "thread"\n'
            f'[testing.faults."1"]\nextra_latency_ms = {latency}\n'
        )
    return repo


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
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


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


class LoadBalancer:
    """Clients behind a load balancer: they send requests until the health check says not ready.

    A request starts only while the balancer holds the server ready (checked and counted under one
    lock), so once `stopped()` is true no new request will ever start.
    """

    def __init__(self, url: str, clients: int) -> None:
        self.url = url
        self.ready = True
        self.results: list[tuple[float, float, int | str]] = []  # (sent at, answered at, status or error)
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        self.checker = threading.Thread(target=self.check, daemon=True)
        self.saw_not_ready = threading.Event()

    def start(self) -> None:
        for thread in [*self.threads, self.checker]:
            thread.start()

    def check(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                status = httpx.get(f"{self.url}/v2/health/ready", timeout=10).status_code
            except httpx.TransportError:
                status = 0
            if status != 200:
                with self.lock:
                    self.ready = False
                self.saw_not_ready.set()
                return
            time.sleep(0.05)

    def client(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            for _ in range(2000):  # bounded
                with self.lock:
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
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in self.threads)


def serve(tmp_path: Path, *extra: str) -> tuple[str, Path, subprocess.Popen[bytes]]:
    port = free_port()
    state = tmp_path / "state"
    command = [
        *MODELSERVE, "serve", str(slow_repo(tmp_path / "models")), "--port", str(port),
        "--state-dir", str(state), "--drain-delay", "120", "--drain-timeout", "40", "--log-level", "info",
        *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return f"http://127.0.0.1:{port}", state, process


def drain_under_load(url: str, process: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Load, SIGTERM, wait for the balancer to stop, long requests in flight, SIGTERM again; the facts."""
    wait_ready(url, process)
    balancer = LoadBalancer(url, clients=8)
    balancer.start()
    wait_until(lambda: len(balancer.results) >= 40, 60, "the load never got going")
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert balancer.saw_not_ready.wait(60), "readiness never turned 503"
    readiness = httpx.get(f"{url}/v2/health/ready", timeout=10)
    balancer.join()  # every request it started was answered: the socket is still open
    long_results: list[tuple[float, int | str]] = []

    def long_request() -> None:
        try:
            outcome: int | str = httpx.post(
                f"{url}/v2/models/long/infer", json=REQUEST, timeout=60
            ).status_code
        except httpx.HTTPError as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        long_results.append((time.monotonic(), outcome))

    longs = [threading.Thread(target=long_request) for _ in range(2)]
    for thread in longs:
        thread.start()
    # Under --workers each poll reaches either worker: wait until one reports both requests running
    # (the kernel spreads connections, so they may be split: then both workers report one).
    seen: dict[str, int] = {}

    def running() -> bool:
        answer = httpx.get(f"{url}/v2/health/ready", timeout=10).json()
        seen[answer["replica"]] = answer["in_flight"]
        return answer.get("in_flight", 0) >= 2 or sum(seen.values()) >= 2

    wait_until(running, 30, "the long requests never reached the server")
    closing = time.monotonic()
    process.send_signal(signal.SIGTERM)  # a second signal ends the drain delay: the socket closes
    output = process.communicate(timeout=40 + 30)[0].decode()
    exited = time.monotonic()
    for thread in longs:
        thread.join(timeout=60)
    return {
        "balancer": balancer, "signalled": signalled, "readiness": readiness, "long": long_results,
        "closing": closing, "exited": exited, "output": output,
    }  # fmt: skip


def check_drain(facts: dict[str, Any], process: subprocess.Popen[bytes], processes: int) -> None:
    output = facts["output"]
    results = facts["balancer"].results
    failed = [outcome for _, _, outcome in results if outcome != 200]
    in_flight = [sent for sent, answered, _ in results if sent < facts["signalled"] < answered]
    assert failed == [], output
    assert in_flight, "no request was in flight at SIGTERM: the test did not test the drain"
    readiness = facts["readiness"]
    assert readiness.status_code == 503 and "draining" in readiness.json()["error"]
    assert [outcome for _, outcome in facts["long"]] == [200, 200], output
    # Running when the socket closed, and answered after: the drain waited for them.
    assert all(answered > facts["closing"] for answered, _ in facts["long"])
    assert process.returncode == 0, output
    assert facts["exited"] - facts["closing"] < 40 + 10, "the drain took longer than its deadline"
    assert output.count("Waiting for application shutdown") == processes, output  # state written once each
    assert output.count("draining") >= processes


def test_sigterm_under_load_fails_no_request_and_exits_within_the_deadline(tmp_path: Path) -> None:
    url, state, process = serve(tmp_path)
    try:
        facts = drain_under_load(url, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    check_drain(facts, process, processes=1)
    assert (state / "audit.0.json").is_file()  # the audit log was written before exiting


def test_serve_workers_drains_every_worker_readiness_first_on_sigterm(tmp_path: Path) -> None:
    url, _, process = serve(tmp_path, "--workers", "2")
    try:
        facts = drain_under_load(url, process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    check_drain(facts, process, processes=2)


def test_a_second_serve_on_a_taken_port_exits_in_one_line_before_touching_anything(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        repo = slow_repo(tmp_path / "models")
        for extra in ([], ["--workers", "2"]):
            state = tmp_path / f"state{len(extra)}"
            command = [
                *MODELSERVE,
                "serve",
                str(repo),
                "--port",
                str(port),
                "--state-dir",
                str(state),
                *extra,
            ]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            assert result.returncode != 0 and result.stdout == ""
            assert result.stderr.strip().count("\n") == 0, result.stderr  # one line, no traceback
            assert f"port {port}" in result.stderr and "already in use" in result.stderr
            assert not state.exists()  # no state folder, lock or database was written
