"""Promotion safety: a rolled-back version needs `--force` (with a reason, audited) to be promoted by hand,
and `stage` refuses a candidate whose inputs/outputs differ from the live version's unless forced.

Real servers and real ONNX models: the rollback comes from a real rollout whose candidate fails (faults
from config.toml), the incompatible candidate is an MLP with 32 inputs where the live one takes 16.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import create_app
from modelserve.serving.compatibility import incompatibilities, shapes_agree
from modelserve.serving.tensors import TensorSpec

TOKEN = "promotion-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
BODY = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.25] * 16}]}


def spec(name: str, shape: tuple[int, ...], datatype: str = "FP32") -> TensorSpec:
    return TensorSpec(name, datatype, shape)


def test_shapes_agree_when_every_dimension_is_equal_or_dynamic_on_either_side() -> None:
    assert shapes_agree((-1, 16), (-1, 16)) and shapes_agree((-1, 16), (1, 16))
    assert shapes_agree((4, 16), (-1, -1))
    assert not shapes_agree((-1, 32), (-1, 16))
    assert not shapes_agree((-1, 16), (-1, 16, 1))


def test_incompatibilities_name_each_difference_and_extra_outputs_are_fine() -> None:
    live_in, live_out = [spec("input", (-1, 16))], [spec("probabilities", (-1, 2))]
    extra_output = [*live_out, spec("label", (-1,))]
    assert incompatibilities(live_in, live_out, [spec("input", (1, 16))], extra_output) == []
    problems = incompatibilities(
        [*live_in, spec("mask", (-1,), "BOOL")],
        live_out,
        [spec("input", (-1, 32), "FP64"), spec("extra", (-1,))],
        [spec("scores", (-1, 2))],
    )
    assert problems == [
        "input 'input' is FP64, live takes FP32",
        "input 'input' has shape [-1, 32], live has [-1, 16]",
        "input 'mask' is missing",
        "input 'extra' is new (clients do not send it)",
        "output 'probabilities' is missing",
    ]


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.request(method, f"{url}{path}", json=body, headers=AUTH, timeout=30)


def serve(repo: Path, state: Path) -> Any:
    config = ServerConfig(repository=repo, state_dir=state, admin_token=TOKEN)
    return testing.serve(create_app(config))


def test_stage_refuses_a_candidate_with_other_input_shapes_unless_forced_and_the_audit_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    testing.mlp(repo / "fraud" / "3" / "model.onnx", (32, 8, 2), seed=3)  # takes [-1, 32]
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    with serve(repo, tmp_path / "state") as server:
        url = server.url
        refused = admin(url, "POST", "/admin/models/fraud/stage", {"version": "3"})
        status = admin(url, "GET", "/admin/models/fraud").json()
        assert main(["stage", "fraud", "3", "--url", url]) == 1
        refused_cli = capsys.readouterr().err
        compatible = admin(url, "POST", "/admin/models/fraud/stage", {"version": "2"})
        assert main(["stage", "fraud", "3", "--force", "--reason", "new features", "--url", url]) == 0
        forced = capsys.readouterr().out
        history = admin(url, "GET", "/admin/models/fraud/history").json()
        served = httpx.post(f"{url}/v2/models/fraud/infer", json=BODY, timeout=30)
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert "version 3 of 'fraud' is not compatible with live version 1" in error
    assert "input 'input' has shape [-1, 32], live has [-1, 16]" in error and "--force" in error
    assert [w["version"] for w in status["warm"]] == ["1"]  # the refused version left nothing behind
    assert status["live_version"] == "1" and status["candidate"] is None
    assert "409" in refused_cli and "not compatible" in refused_cli
    assert compatible.status_code == 200
    assert "version 3 staged warm" in forced
    entry = [e for e in history["entries"] if e["action"] == "stage"][-1]
    assert entry["actor"] == "admin" and entry["reason"] == "new features"
    difference = "input 'input' has shape [-1, 32], live has [-1, 16]"
    assert entry["detail"] == f"forced over incompatibility with 1: {difference}"
    assert served.status_code == 200 and served.headers["x-model-version"] == "1"  # live untouched


def rolled_back(url: str) -> dict[str, Any]:
    """Start a rollout of the failing version 2 under real traffic; wait until it is rolled back."""
    plan = {
        "name": "quick", "interval_s": 0.05, "window_s": 60.0,
        "stages": [{"name": "canary-50", "weight": 50, "min_duration_s": 0.0, "min_samples": 20}],
    }  # fmt: skip
    started = admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": plan})
    assert started.status_code == 200, started.text
    stop = threading.Event()

    def traffic(n: int) -> None:
        with httpx.Client(timeout=30) as client:
            for i in range(100_000):
                if stop.is_set():
                    return
                client.post(f"{url}/v2/models/fraud/infer", json=BODY, headers={"x-user-id": f"u{n}-{i}"})

    threads = [threading.Thread(target=traffic, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(1200):
            data = admin(url, "GET", "/admin/models/fraud/rollout").json()
            if not data["rollout"]["active"]:
                return data
            stop.wait(0.05)
        raise AssertionError(f"the rollout did not finish: {data['rollout']}")
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)


def test_promoting_a_rolled_back_version_needs_force_and_a_reason_and_is_audited_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    (repo / "fraud" / "config.toml").write_text('live = "1"\n[testing.faults."2"]\nerror_rate = 1.0\n')
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    state = tmp_path / "state"
    with serve(repo, state) as server:
        done = rolled_back(server.url)
        refused = admin(server.url, "POST", "/admin/models/fraud/promote")
    assert done["rollout"]["state"] == "rolled_back", done["rollout"]
    assert refused.status_code == 409
    error = refused.json()["error"]
    assert "version 2 of 'fraud' was rolled back" in error and "by rollout: rolled back: " in error
    assert "--force --reason" in error

    with serve(repo, state) as server:  # the withdrawal is durable: a restart still refuses
        url = server.url
        admin(url, "POST", "/admin/models/fraud/stage", {"version": "2"})
        again = admin(url, "POST", "/admin/models/fraud/promote")
        no_reason = admin(url, "POST", "/admin/models/fraud/promote", {"force": True})
        assert main(["promote", "fraud", "--url", url]) == 1
        cli_refused = capsys.readouterr().err
        assert main(["promote", "fraud", "--force", "--reason", "hotfix verified offline", "--url", url]) == 0
        promoted = capsys.readouterr().out
        history = admin(url, "GET", "/admin/models/fraud/history").json()
        status = admin(url, "GET", "/admin/models/fraud").json()
        # Promoted: the withdrawal is gone, so a later rollback and promote need no force.
        admin(url, "POST", "/admin/models/fraud/rollback")
        plain = admin(url, "POST", "/admin/models/fraud/promote")
    assert again.status_code == 409 and "was rolled back" in again.json()["error"]
    assert no_reason.status_code == 400 and "needs a reason" in no_reason.json()["error"]
    assert "409" in cli_refused and "--force" in cli_refused
    assert "promote 1 -> 2" in promoted and status["live_version"] == "2"
    entry = [e for e in history["entries"] if e["action"] == "promote"][-1]
    assert entry["actor"] == "admin" and entry["reason"] == "hotfix verified offline"
    assert entry["detail"].startswith("forced over a rollback: version 2 of 'fraud' was rolled back")
    assert entry["before"]["live"] == "1" and entry["after"]["live"] == "2"
    assert plain.status_code == 200, plain.text
