"""The accuracy gate: statistics on labelled outcomes, and a real rollout it rolls back (or lets through).

The candidate in the rollout tests is a real ONNX model: credit v1 with its label output inverted, as
fast and error-free as v1 and wrong on three rows in four. Labels are the truth of
`examples/labelled_traffic.jsonl`, posted through `POST /v2/models/credit/labels` by request id.
"""

from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.errors import ConfigError
from modelserve.monitoring.outcomes import OutcomeTally
from modelserve.rollout.gates import FAIL, INCONCLUSIVE, PASS, OutcomeEvidence, evaluate_gate
from modelserve.rollout.plan import GateSpec, Stage, load_plan, plan_from_dict
from modelserve.rollout.sample import Sample
from modelserve.server.app import ModelServe
from modelserve.server.services import FeatureSet

EXAMPLES = Path(__file__).parent.parent / "examples"
PLAN = EXAMPLES / "plans" / "accuracy.toml"
AUTH = {"authorization": "Bearer t"}
STAGE = Stage(name="shadow", shadow=True, min_samples=100)
RELATIVE = GateSpec(name="acc", metric="accuracy", mode="relative", threshold=1.0, floor=0.02)


def accuracy(gate: GateSpec, outcomes: OutcomeEvidence | None) -> Any:
    return evaluate_gate(gate, STAGE, Sample(requests=1000), Sample(requests=1000), outcomes=outcomes)


def evidence(correct: int, samples: int, baseline_correct: int, baseline_samples: int) -> OutcomeEvidence:
    return OutcomeEvidence(
        correct=correct, samples=samples, baseline_correct=baseline_correct, baseline_samples=baseline_samples
    )


def test_a_clearly_less_accurate_candidate_fails_with_its_numbers() -> None:
    result = accuracy(RELATIVE, evidence(50, 200, 150, 200))
    assert result.verdict == FAIL
    assert (result.observed, result.baseline, result.difference) == (0.25, 0.75, -0.5)
    assert result.threshold == pytest.approx(0.73)  # live accuracy minus the allowed drop
    assert result.samples == 200 and result.baseline_samples == 200 and result.confidence == 0.95
    low, high = result.difference_interval
    assert low < -0.5 < high < -0.02  # the whole interval is beyond the allowed drop
    assert "accuracy 0.2500 vs live 0.7500" in result.detail


def test_equal_accuracy_passes_and_a_small_drop_within_the_margin_passes() -> None:
    assert accuracy(RELATIVE, evidence(150, 200, 150, 200)).verdict == PASS
    assert accuracy(RELATIVE, evidence(1480, 2000, 1500, 2000)).verdict == PASS  # 1 point < 2 allowed


def test_a_drop_not_yet_beyond_doubt_holds() -> None:
    result = accuracy(RELATIVE, evidence(130, 200, 150, 200))  # -10 points on 200 rows each
    assert result.verdict == INCONCLUSIVE and "not yet beyond doubt" in result.detail


def test_too_few_labels_hold_never_pass() -> None:
    assert accuracy(RELATIVE, None).verdict == INCONCLUSIVE
    held = accuracy(RELATIVE, evidence(99, 99, 99, 99))
    assert held.verdict == INCONCLUSIVE and held.detail == "candidate has 99 of 100 labelled rows"
    baseline_short = accuracy(RELATIVE, evidence(100, 100, 10, 10))
    assert baseline_short.verdict == INCONCLUSIVE and "baseline has 10" in baseline_short.detail


def test_the_absolute_form_is_a_minimum_accuracy() -> None:
    floor = GateSpec(name="acc", metric="accuracy", threshold=0.7)
    assert accuracy(floor, evidence(50, 200, 0, 0)).verdict == FAIL
    assert accuracy(floor, evidence(150, 200, 0, 0)).verdict == PASS
    assert accuracy(floor, evidence(128, 200, 0, 0)).verdict == INCONCLUSIVE  # 0.64: not yet beyond doubt


def test_identical_versions_rarely_fail_however_often_the_gate_looks() -> None:
    """The confidence sequence keeps repeated looks honest: 200 rollouts of equal 75 % accuracy,
    looked at every 20 labels up to 2,000: at most a few false failures (5 % is the bound)."""
    rng = np.random.default_rng(7)
    failed = 0
    for _ in range(200):
        mine = rng.random(2000) < 0.75
        theirs = rng.random(2000) < 0.75
        for n in range(100, 2001, 20):
            if accuracy(RELATIVE, evidence(int(mine[:n].sum()), n, int(theirs[:n].sum()), n)).verdict == FAIL:
                failed += 1
                break
    assert failed <= 10


def test_labels_since_counts_by_wall_time_slot() -> None:
    now = [1000.0]
    tally = OutcomeTally(wall_clock=lambda: now[0])
    tally.record_labels("m", "1", 3, 4, experiment=False)
    now[0] = 1100.0
    tally.record_labels("m", "1", 1, 2, experiment=False)
    assert tally.labelled_since("m", "1", 0.0) == (4, 6)
    assert tally.labelled_since("m", "1", 1095.0) == (1, 2)  # the 10 s slot that holds 1095
    assert tally.labelled_since("m", "1", 1200.0) == (0, 0)
    assert tally.labelled_since("m", "2", 0.0) == (0, 0)
    tally.forget("m")
    assert tally.labelled_since("m", "1", 0.0) == (0, 0)


def test_a_shadow_is_compared_on_the_very_rows_it_predicted() -> None:
    """Live v1 served 4 labelled requests; shadow v2 predicted only 2 of them (the others were shed).
    Per role each version counts its own rows; the pair counts the 2 rows both predicted."""
    from modelserve.monitoring.outcomes import ACCURACY, LabelJoin, Prediction

    tally = OutcomeTally(wall_clock=lambda: 1000.0)
    join = LabelJoin(tally)
    for i in range(4):
        join.remember(f"r{i}", Prediction(model="m", version="1", kind=ACCURACY, values=np.array([1])))
    join.add_shadow("r0", "2", np.array([0]))
    join.add_shadow("r1", "2", np.array([1]))
    for i in range(4):
        join.resolve(f"r{i}", 1 if i != 1 else 0, model="m")
    assert tally.labelled_since("m", "1", 0.0) == (3, 4)  # v1 served 4, right on 3
    assert tally.labelled_since("m", "2", 0.0, role="shadow") == (0, 2)  # v2 wrong on both of its rows
    assert tally.labelled_since("m", "2", 0.0) == (0, 0)  # it served nothing
    assert tally.paired_since("m", "1", "2", 0.0) == (1, 0, 2)  # on the same 2 rows: v1 right once


def test_the_example_plan_has_the_accuracy_gate_in_every_stage() -> None:
    plan = load_plan(PLAN)
    for stage in plan.stages:
        gate = next(g for g in stage.gates if g.metric == "accuracy")
        assert (gate.mode, gate.threshold, gate.floor, gate.min_samples) == ("relative", 1.0, 0.02, 200)
    with pytest.raises(ConfigError, match="fraction"):
        plan_from_dict(
            {"stages": [{"name": "a", "weight": 5, "gates": [{**_raw(RELATIVE), "threshold": 2}]}]}
        )


def _raw(gate: GateSpec) -> dict[str, Any]:
    return {"name": gate.name, "metric": gate.metric, "mode": gate.mode, "floor": gate.floor}


# -- a real rollout ------------------------------------------------------------------------------


def inverted_v1(repo: Path, version: str) -> None:
    """credit v1 whose `label` output says the opposite (1 - label): fast, healthy, mostly wrong."""
    model = onnx.load(str(EXAMPLES / "models" / "credit" / "1" / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["label_v1" if name == "label" else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "one"))
    model.graph.node.append(helper.make_node("Sub", ["one", "label_v1"], ["label"]))
    (repo / "credit" / version).mkdir()
    onnx.save(model, str(repo / "credit" / version / "model.onnx"))


def rollout_with_labels(tmp_path: Path, build: Any) -> tuple[dict[str, Any], ModelServe]:
    """Roll credit v3 out with the example accuracy plan (compressed) under labelled traffic, to the end."""
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    build(repo)
    data = [json.loads(line) for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()]
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    services = modelserve.services
    assert services.shadow is not None
    services.shadow.max_loop_lag_s = math.inf  # compare every request, also on a busy host
    plan = load_plan(PLAN).scaled(0.02).to_dict()  # 1.2 s minimum per stage, a look every 0.1 s
    rng = random.Random(3)
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        started = client.post(
            "/admin/models/credit/rollout", json={"version": "3", "plan": plan}, headers=AUTH
        )
        assert started.status_code == 200, started.text
        sent = 0
        for _ in range(200):  # batches of 25 requests, then their labels
            labels = []
            for _ in range(25):
                row = data[sent % len(data)]
                body = {
                    "id": f"r{sent}",
                    "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row["input"]}],
                }
                headers = {"x-user-id": f"u{rng.randrange(10**9)}"}
                assert client.post("/v2/models/credit/infer", json=body, headers=headers).status_code == 200
                labels.append({"request_id": f"r{sent}", "label": row["label"]})
                sent += 1
            # Shadow predictions join before the labels. The client reads a response before the server's
            # observer admits its shadow run, so first a request the server handles after that observer.
            assert client.get("/v2/health/live").status_code == 200
            assert services.shadow.runner.wait_idle(30)
            answer = client.post("/v2/models/credit/labels", json={"labels": labels}, headers=AUTH)
            assert answer.status_code == 200 and answer.json()["accepted"] == 25
            rollout = client.get("/admin/models/credit/rollout", headers=AUTH).json()
            if not rollout["rollout"]["active"]:
                return rollout, modelserve
    raise AssertionError(f"the rollout did not finish: {rollout['rollout']}")


def test_the_accuracy_gate_rolls_back_a_healthy_but_wrong_candidate_with_the_evidence(tmp_path: Path) -> None:
    answer, _ = rollout_with_labels(tmp_path, lambda repo: inverted_v1(repo, "3"))
    rollout = answer["rollout"]
    assert rollout["state"] == "rolled_back" and rollout["stage"] == "shadow", rollout
    assert rollout["reason"].startswith("accuracy_vs_live: accuracy 0.")
    event = next(e for e in answer["events"] if e["kind"] == "rolled_back")
    gates = {g["gate"]: g for g in event["gates"]}
    gate = gates["accuracy_vs_live"]
    assert gate["verdict"] == FAIL and gate["samples"] >= 200 and gate["baseline_samples"] >= 200
    assert gate["observed"] < 0.35 and gate["baseline"] > 0.65  # v1 is right on ~75 % of these rows
    assert gate["difference_interval"][1] < -0.02 and gate["threshold"] == pytest.approx(
        gate["baseline"] - 0.02
    )
    # The serving gates had nothing against it: it was healthy, only wrong.
    assert all(g["verdict"] != FAIL for name, g in gates.items() if name != "accuracy_vs_live")


def test_a_healthy_candidate_as_accurate_as_live_is_promoted(tmp_path: Path) -> None:
    def copy_of_v1(repo: Path) -> None:
        shutil.copytree(repo / "credit" / "1", repo / "credit" / "3")

    answer, _ = rollout_with_labels(tmp_path, copy_of_v1)
    assert answer["rollout"]["state"] == "promoted", answer["rollout"]
    results = [(e, g) for e in answer["events"] for g in e["gates"] if g["gate"] == "accuracy_vs_live"]
    assert FAIL not in [g["verdict"] for _, g in results] and PASS in [g["verdict"] for _, g in results]
    # In the shadow stage both versions are judged on the same rows: a copy of v1 is exactly as right.
    in_shadow = [
        g for e, g in results if e["stage"] == "shadow" or e["message"].startswith("shadow passed")
    ]  # the event that leaves a stage is stamped with the next one
    shadow = [g for g in in_shadow if g["difference"] is not None]
    assert shadow and all(g["samples"] == g["baseline_samples"] and g["difference"] == 0 for g in shadow)


def test_a_plan_with_an_accuracy_gate_is_refused_without_monitoring(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    config = ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t")
    modelserve = ModelServe(config, features=FeatureSet(monitoring=False))
    plan = load_plan(PLAN).to_dict()
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        refused = client.post(
            "/admin/models/credit/rollout", json={"version": "2", "plan": plan}, headers=AUTH
        )
    assert refused.status_code == 409 and "accuracy gate" in refused.json()["error"]
