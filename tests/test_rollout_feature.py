"""The rollout feature on the real server: real requests from threads, faults from config.toml [testing].

Plans are compressed (fractions of a second, tens of samples) and keep the default gates; faults come
from `serving/faults.py` through the repository's config.toml, so no part of the path is mocked.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import create_app

TOKEN = "rollout-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


def rollout_events(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Webhook payloads that are rollout events (the audit log's entries go to the same URLs)."""
    return [body for body in bodies if body.get("kind") != "audit"]


def fraud_repo(root: Path, faults: str = "") -> Path:
    """`fraud` v1 (live) and v2; `faults` is the body of a `[testing.faults."2"]` table, if any."""
    repo = testing.repository(root, {"fraud": {"1": 1, "2": 2}})
    config = 'live = "1"\n'
    if faults:
        config += f'[testing.faults."2"]\n{faults}\n'
    (repo / "fraud" / "config.toml").write_text(config)
    return repo


def quick_plan(*stages: tuple[str, int, int], latency_floor_s: float = 0.0) -> dict[str, Any]:
    """A compressed plan: (name, weight, min_samples) stages of 0.3 s minimum, the default gates.

    With tens of samples on a busy two-core machine the p95 of a microsecond model is noise (a
    healthy candidate measured 1.75x its baseline in one of five runs), so tests that need a healthy
    candidate to pass give the p95 gate a floor: limit = max(1.5 x baseline, `latency_floor_s`).
    """
    gates = []
    if latency_floor_s:
        p95 = {"name": "p95_vs_baseline", "metric": "p95", "mode": "relative", "threshold": 1.5}
        gates = [{**p95, "floor": latency_floor_s}]
    return {
        "name": "quick",
        "interval_s": 0.1,
        "window_s": 60.0,
        "stages": [
            {"name": name, "weight": weight, "min_duration_s": 0.3, "min_samples": samples, "gates": gates}
            for name, weight, samples in stages
        ],
    }


def client_load(url: str) -> testing.Traffic:
    return testing.Traffic(url, body=BODY)


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{url}{path}", json=body, headers=AUTH, timeout=30)
    assert response.status_code < 400, response.text
    return response.json()


def wait_for(
    url: str, predicate: Callable[[dict[str, Any]], bool], *, model: str = "fraud", timeout: float = 30.0
) -> dict[str, Any]:
    """Poll the rollout's admin status until `predicate(answer)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        data = admin(url, "GET", f"/admin/models/{model}/rollout")
        if predicate(data):
            return data
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached in {timeout} s: {data['rollout']}")
        time.sleep(0.05)


def finished(data: dict[str, Any]) -> bool:
    rollout = data["rollout"]
    return rollout is not None and not rollout["active"]


@contextlib.contextmanager
def running(
    repo: Path, state: Path, *, tracer_provider: TracerProvider | None = None, **options: Any
) -> Iterator[str]:
    config = ServerConfig(repository=repo, state_dir=state, admin_token=TOKEN, **options)
    app = create_app(config, tracer_provider=tracer_provider)
    with testing.serve(app) as server:
        yield server.url


def kinds(data: dict[str, Any]) -> list[str]:
    return [event["kind"] for event in data["events"]]


def test_healthy_candidate_passes_every_stage_and_is_promoted_with_gate_numbers_in_the_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = fraud_repo(tmp_path / "models")
    plan = quick_plan(("canary-10", 10, 30), ("canary-50", 50, 60), ("full", 100, 60), latency_floor_s=0.05)
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        started = admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": plan})
        assert started["rollout"]["stage"] == "canary-10" and started["rollout"]["weight"] == 10
        refused = httpx.post(
            f"{url}/admin/models/fraud/rollout", json={"version": "2"}, headers=AUTH, timeout=30
        )
        assert refused.status_code == 409 and "already has a rollout" in refused.json()["error"]
        done = wait_for(url, finished)
        status = admin(url, "GET", "/admin/models/fraud")
        monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
        assert main(["rollout", "status", "fraud", "--url", url]) == 0
    assert done["rollout"]["state"] == "promoted", done["rollout"]["reason"]
    decisions = [kind for kind in kinds(done) if kind != "gates"]  # gates events depend on timing
    assert decisions == ["started", "advanced", "advanced", "promoted"]
    assert status["live_version"] == "2" and status["previous"] == "1"
    assert status["policy"]["canary_weight"] == 0 and status["policy"]["candidate"] is None
    assert status["rollout"]["state"] == "promoted"
    for event in done["events"]:
        if event["kind"] in ("advanced", "promoted"):
            gates = {g["gate"]: g for g in event["gates"]}
            assert all(g["verdict"] == "pass" for g in gates.values())
            error_gate = gates["error_rate_vs_baseline"]
            assert error_gate["samples"] >= error_gate["required_samples"]
            assert error_gate["observed"] == 0.0 and error_gate["threshold"] == 0.005  # 0 + the floor
            assert gates["p95_vs_baseline"]["baseline"] > 0
    assert traffic.snapshot()[("2", 200)] > 0
    out = capsys.readouterr().out
    assert "rollout of 2 against 1 (plan 'quick'): promoted" in out
    assert "p95_vs_baseline: pass observed=" in out and "baseline=" in out
    assert "promoted" in out.splitlines()[-1] or "promoted" in out


def test_error_regression_holds_the_stage_then_is_rolled_back_and_gets_no_more_traffic(
    tmp_path: Path,
) -> None:
    repo = fraud_repo(tmp_path / "models", "error_rate = 0.05\nseed = 7")
    plan = quick_plan(("canary-50", 50, 200))
    with running(repo, tmp_path / "state") as url, client_load(url) as traffic:
        admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": plan})
        done = wait_for(url, finished)
        after_rollback = traffic.snapshot()
        deadline = time.monotonic() + 30
        while sum(traffic.snapshot().values()) < sum(after_rollback.values()) + 300:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        later = traffic.snapshot() - after_rollback
        status = admin(url, "GET", "/admin/models/fraud")
    assert done["rollout"]["state"] == "rolled_back"
    assert "error_rate" in done["rollout"]["reason"]
    assert after_rollback[("2", 500)] > 0  # real 500s from the injected faults
    # Until the rollback the error gates held the stage (inconclusive: too few samples, then
    # "looks worse, not yet beyond doubt"); they never passed, so the stage never advanced.
    events = done["events"]
    assert [e["kind"] for e in events][-1] == "rolled_back"
    for event in events[:-1]:
        assert all(g["verdict"] == "inconclusive" for g in event["gates"] if g["metric"] == "error_rate")
    # The absolute error gate, or the relative one once the baseline has its samples too.
    failed = [g for g in events[-1]["gates"] if g["verdict"] == "fail" and g["metric"] == "error_rate"]
    assert failed and all(g["samples"] >= 200 and g["observed"] > g["threshold"] for g in failed)
    for gate in failed:  # beyond doubt: the interval of the rate (or of the excess) clears the limit
        if gate["difference"] is None:
            assert gate["interval"][0] > gate["threshold"]
        else:
            assert gate["difference_interval"][0] > gate["threshold"] - gate["baseline"]
    # Requests in flight at the switch may still finish on 2; none started after it may.
    assert sum(n for (version, _), n in later.items() if version == "2") <= 3
    assert status["live_version"] == "1" and status["candidate"] == "2"  # kept warm for a retry
    assert status["policy"]["canary_weight"] == 0


def test_latency_regression_is_rolled_back_by_the_p95_gate(tmp_path: Path) -> None:
    # The tiny model answers in microseconds; 5 ms extra makes the candidate far more than 3x slower.
    repo = fraud_repo(tmp_path / "models", "extra_latency_ms = 5.0")
    plan = quick_plan(("canary-50", 50, 60))
    with running(repo, tmp_path / "state") as url, client_load(url):
        admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": plan})
        done = wait_for(url, finished)
    assert done["rollout"]["state"] == "rolled_back"
    gates = {g["gate"]: g for g in done["events"][-1]["gates"]}
    p95 = gates["p95_vs_baseline"]
    # 5 ms of CPU burnt per request (the fault), measured as thread CPU time within 2 %.
    assert p95["verdict"] == "fail" and p95["observed"] > 0.0045 and p95["observed"] > 3 * p95["baseline"]
    assert gates["error_rate_vs_baseline"]["verdict"] == "pass"
    assert done["rollout"]["reason"].startswith("p95_vs_baseline")
    assert done["events"][-1]["data"]["latency_measure"] == "compute"  # CPU time, like for like


def test_without_traffic_the_rollout_holds_and_never_promotes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = fraud_repo(tmp_path / "models")
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(
        'interval_s = 0.05\nwindow_s = 60.0\n[[stages]]\nname = "canary-50"\nweight = 50\n'
        "min_duration_s = 0.0\nmin_samples = 20\n"
    )
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    with running(repo, tmp_path / "state", tracer_provider=tracer_provider) as url:
        assert main(["rollout", "start", "fraud", "2", "--plan", str(plan_file), "--url", url]) == 0
        wait_for(url, lambda d: d["rollout"]["stage_elapsed_s"] >= 1.0)  # 20 evaluation intervals
        held = admin(url, "GET", "/admin/models/fraud/rollout")
        status = admin(url, "GET", "/admin/models/fraud")
    events = {e.name: e.attributes for s in spans.get_finished_spans() for e in s.events}
    gates = events["modelserve.rollout.gates"]
    assert gates is not None and gates["model"] == "fraud" and gates["stage"] == "canary-50"
    assert gates["gates.error_rate_vs_baseline.verdict"] == "inconclusive"
    assert gates["gates.error_rate_vs_baseline.required_samples"] == 20
    assert "modelserve.rollout.started" in events
    assert held["rollout"]["state"] == "running" and held["rollout"]["plan"] == "plan"
    assert kinds(held) == ["started", "gates"]
    assert all(g["verdict"] == "inconclusive" for g in held["rollout"]["gates"])
    assert {g["samples"] for g in held["rollout"]["gates"]} == {0}
    assert status["live_version"] == "1"


def test_operator_pause_resume_skip_and_abort(tmp_path: Path) -> None:
    repo = fraud_repo(tmp_path / "models")
    plan = quick_plan(("canary-10", 10, 1000), ("canary-50", 50, 1000))
    base = "/admin/models/fraud/rollout"
    with running(repo, tmp_path / "state") as url:
        # Evaluations every 100 s: none runs during the test, so the events are the operator's alone.
        admin(url, "POST", base, {"version": 2, "plan": plan, "time_scale": 1000})
        paused = admin(url, "POST", f"{base}/pause", {"reason": "lunch"})
        resumed = admin(url, "POST", f"{base}/resume")
        skipped = admin(url, "POST", f"{base}/promote")
        policy = admin(url, "GET", "/admin/models/fraud")["policy"]
        aborted = admin(url, "POST", f"{base}/abort")
        after = admin(url, "GET", "/admin/models/fraud")
        missing = httpx.post(f"{url}{base}/pause", headers=AUTH, timeout=30)
        bad_plan = httpx.post(
            f"{url}{base}", json={"version": "2", "plan": {"stages": []}}, headers=AUTH, timeout=30
        )
    assert paused["rollout"]["state"] == "paused" and paused["rollout"]["reason"] == "lunch"
    assert resumed["rollout"]["state"] == "running"
    assert skipped["rollout"]["stage"] == "canary-50" and policy["canary_weight"] == 50
    assert aborted["rollout"]["state"] == "aborted"
    assert after["policy"]["canary_weight"] == 0 and after["live_version"] == "1"
    assert kinds(aborted) == ["started", "paused", "resumed", "skipped", "advanced", "aborted"]
    assert missing.status_code == 404
    assert bad_plan.status_code == 400 and "at least one" in bad_plan.json()["error"]


class Receiver:
    """A real local HTTP server that records every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                received.append(orjson.loads(self.rfile.read(int(self.headers["content-length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_receiver_gets_every_event_and_a_dead_receiver_never_holds_up_serving(tmp_path: Path) -> None:
    repo = fraud_repo(tmp_path / "models")
    plan = quick_plan(("canary-20", 20, 30), ("full", 100, 30), latency_floor_s=0.05)
    # A dead receiver that accepts connections and never answers: the worst kind.
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    dead.listen(16)
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}/hook"
    try:
        with Receiver() as receiver:
            webhooks = (dead_url, receiver.url)
            with running(repo, tmp_path / "state", webhooks=webhooks) as url, client_load(url) as traffic:
                admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": plan})
                done = wait_for(url, finished)
                deadline = time.monotonic() + 10
                while len(rollout_events(receiver.bodies)) < len(done["events"]):
                    assert time.monotonic() < deadline, "the live receiver missed events"
                    time.sleep(0.02)
                stats = admin(url, "GET", "/admin/models/fraud/rollout")["webhooks"]
                served = traffic.snapshot()
    finally:
        dead.close()
    assert done["rollout"]["state"] == "promoted", done["rollout"]["reason"]
    assert rollout_events(receiver.bodies) == done["events"]
    audited = [b["action"] for b in receiver.bodies if b.get("kind") == "audit"]
    assert "rollout" in audited and "rollout.promoted" in audited  # the audit log goes out too
    assert stats["sent"] == len(receiver.bodies)
    assert stats["queued"] >= 1  # the dead receiver's queue still holds its first event
    assert {status for (_, status) in served} == {200}
