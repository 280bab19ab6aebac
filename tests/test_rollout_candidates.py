"""Real candidates through the real server: each bad one is rolled back in the shadow stage, unseen.

Every candidate is an ONNX model built here and served by onnxruntime behind real uvicorn, next to
the live version 1 (an MLP). Nothing is injected: the candidate itself is wrong, slow or failing.

- wrong labels: version 1's scores with the two classes swapped (agreement ~0);
- slow: version 1 plus a chain of 30 products of 256 x 256 matrices made from the input (~5 ms of
  compute per request, which the shadow stage measures as thread CPU time);
- failing: version 1 plus a Gather whose index is the first input feature, so onnxruntime raises
  "out of bounds" on the requests whose first feature is 50 (5 % of the traffic);
- healthy: version 1's graph as is.

Users never see the shadow: every request answers 200 from version 1 until a promotion. The README's
`rollout start credit 2 --plan examples/plans/fast.toml` is run as written against `modelserve serve`
on the example models, with the labelled traffic (credit v2 agrees with v1 on 85.7 % of it, above the
plan's 0.85 bar), and promotes.
"""

from __future__ import annotations

import json
import math
import random
import statistics
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe
from modelserve.testing_processes import ServeProcess

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "candidates-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
#: The first input feature of 1 request in 20: out of the failing candidate's Gather range.
OUT_OF_RANGE = 50.0
#: Shadow -> 50 % -> 100 %, the default gates, compressed; the shadow stage needs 300 comparisons.
PLAN: dict[str, Any] = {
    "name": "candidates",
    "interval_s": 0.1,
    "window_s": 60.0,
    "stages": [
        {"name": "shadow", "shadow": True, "min_duration_s": 0.5, "min_samples": 300, "max_duration_s": 60},
        {"name": "canary-50", "weight": 50, "min_duration_s": 0.5, "min_samples": 100, "max_duration_s": 60},
        {"name": "full", "weight": 100, "min_duration_s": 0.5, "min_samples": 100, "max_duration_s": 60},
    ],
}


def candidate(path: Path, kind: str) -> Path:
    """Version 1's MLP (same weights) turned into the candidate `kind` (see the module docstring)."""
    testing.mlp(path, seed=1)
    model = onnx.load(path)
    graph = model.graph
    graph.node[-1].output[0] = "scores"  # the softmax now feeds the candidate's own head
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    nodes: list[Any] = []
    if kind == "healthy":
        nodes.append(helper.make_node("Identity", ["scores"], ["probabilities"]))
    elif kind == "wrong":
        graph.initializer.append(numpy_helper.from_array(np.array([1, 0], np.int64), "swap"))
        nodes.append(helper.make_node("Gather", ["scores", "swap"], ["probabilities"], axis=1))
    elif kind == "slow":
        size, products = 256, 30
        rng = np.random.default_rng(0)
        widen = rng.normal(0, 0.1, (16, size)).astype(np.float32)
        graph.initializer.extend(
            [
                numpy_helper.from_array(widen, "widen"),
                numpy_helper.from_array(np.eye(size, dtype=np.float32), "eye"),
                zero,
            ]
        )
        nodes += [
            helper.make_node("MatMul", ["input", "widen"], ["row"]),  # [batch, size]
            helper.make_node("Transpose", ["row"], ["column"]),
            helper.make_node("MatMul", ["column", "row"], ["m0"]),  # [size, size], from the input
        ]
        for i in range(products):
            nodes.append(helper.make_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]))
        nodes += [
            helper.make_node("ReduceSum", [f"m{products}"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["scores", "nothing"], ["probabilities"]),
        ]
    elif kind == "failing":
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.arange(10, dtype=np.float32), "table"),
                numpy_helper.from_array(np.array(0, np.int64), "first"),
                zero,
            ]
        )
        nodes += [
            helper.make_node("Gather", ["input", "first"], ["feature"], axis=1),  # [batch]
            helper.make_node("Cast", ["feature"], ["index"], to=onnx.TensorProto.INT64),
            helper.make_node("Gather", ["table", "index"], ["looked_up"]),  # raises past 9
            helper.make_node("ReduceSum", ["looked_up"], ["total"], keepdims=0),
            helper.make_node("Mul", ["total", "zero"], ["nothing"]),
            helper.make_node("Add", ["scores", "nothing"], ["probabilities"]),
        ]
    else:
        raise ValueError(kind)
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def repository(root: Path, kind: str) -> Path:
    repo = testing.repository(root, {"fraud": {"1": 1}})
    candidate(repo / "fraud" / "2" / "model.onnx", kind)
    (repo / "fraud" / "config.toml").write_text('live = "1"\n')
    return repo


def features(rng: random.Random) -> list[float]:
    row = [rng.uniform(-1.0, 1.0) for _ in range(16)]
    row[0] = OUT_OF_RANGE if rng.random() < 0.05 else rng.uniform(0.0, 9.0)
    return row


def client_load(url: str) -> testing.Traffic:
    def body(rng: random.Random) -> dict[str, Any]:
        return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": features(rng)}]}

    return testing.Traffic(url, body=body)


def admin(url: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{url}{path}", json=body, headers=AUTH, timeout=30)
    assert response.status_code < 400, response.text
    return response.json()


def roll_out(tmp_path: Path, kind: str) -> tuple[dict[str, Any], Counter[tuple[str, int]]]:
    """Start the plan for version 2 under traffic; (the finished rollout, the answers)."""
    repo = repository(tmp_path / "models", kind)
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    assert modelserve.services.shadow is not None
    # Shed no shadow for loop lag: on a busy test host the loop is late all the time, and the shadow
    # stage would starve (the rollout then pauses, undecided: correct, but not what is tested here).
    modelserve.services.shadow.max_loop_lag_s = math.inf
    with testing.serve(modelserve.app()) as server, client_load(server.url) as traffic:
        url = server.url
        time.sleep(0.3)  # a baseline for the live version
        admin(url, "POST", "/admin/models/fraud/rollout", {"version": "2", "plan": PLAN})
        deadline = time.monotonic() + 120
        while (done := admin(url, "GET", "/admin/models/fraud/rollout"))["rollout"]["state"] == "running":
            assert time.monotonic() < deadline, (done["rollout"]["state"], done["rollout"]["reason"])
            time.sleep(0.05)
    return done, traffic.counts


def shadow_verdicts(done: dict[str, Any]) -> dict[str, dict[str, Any]]:
    last = done["events"][-1]
    assert last["kind"] == "rolled_back" and last["stage"] == "shadow"
    return {g["gate"]: g for g in last["gates"]}


def no_user_saw_the_candidate(answers: Counter[tuple[str, int]]) -> None:
    assert answers[("1", 200)] > 300
    assert set(answers) == {("1", 200)}, answers  # every answer from version 1, none failed


def test_wrong_labels_are_rolled_back_in_the_shadow_stage_by_agreement(tmp_path: Path) -> None:
    done, answers = roll_out(tmp_path, "wrong")
    assert done["rollout"]["state"] == "rolled_back", (done["rollout"]["state"], done["rollout"]["reason"])
    gate = shadow_verdicts(done)["shadow_agreement"]
    assert gate["verdict"] == "fail" and gate["observed"] < 0.1 and gate["interval"][1] < gate["threshold"]
    assert gate["samples"] >= 100 and gate["threshold"] == 0.85
    no_user_saw_the_candidate(answers)


def test_a_candidate_milliseconds_slower_is_rolled_back_in_the_shadow_stage_by_p95(tmp_path: Path) -> None:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # as served (`[serving] intra_op_threads = 1`)
    slow = ort.InferenceSession(str(candidate(tmp_path / "slow.onnx", "slow")), options)
    fast = ort.InferenceSession(str(testing.mlp(tmp_path / "fast.onnx", seed=1)), options)
    x = {"input": np.full((1, 16), 0.5, np.float32)}

    def cpu_ms(session: ort.InferenceSession) -> float:
        runs = []
        for _ in range(15):
            start = time.thread_time()
            session.run(None, x)
            runs.append((time.thread_time() - start) * 1000)
        return statistics.median(runs)

    extra = cpu_ms(slow) - cpu_ms(fast)
    assert extra > 3.0, f"the slow candidate costs only {extra:.2f} ms more CPU"
    done, answers = roll_out(tmp_path, "slow")
    assert done["rollout"]["state"] == "rolled_back", (done["rollout"]["state"], done["rollout"]["reason"])
    gates = shadow_verdicts(done)
    p95 = gates["p95_vs_baseline"]
    assert p95["verdict"] == "fail" and p95["observed"] > 0.002 and p95["interval"][0] > p95["threshold"]
    assert done["events"][-1]["data"]["latency_measure"] == "compute"  # CPU time on both sides
    assert gates["shadow_agreement"]["verdict"] != "fail"  # same answers: only the time is wrong
    no_user_saw_the_candidate(answers)


def test_a_candidate_raising_inside_onnxruntime_on_5_percent_is_rolled_back_in_the_shadow_stage(
    tmp_path: Path,
) -> None:
    session = ort.InferenceSession(str(candidate(tmp_path / "failing.onnx", "failing")))
    row = np.array([features(random.Random(0))], np.float32)
    row[0, 0] = 3.0
    session.run(None, {"input": row})
    row[0, 0] = OUT_OF_RANGE
    with pytest.raises(Exception, match="out of data bounds"):
        session.run(None, {"input": row})  # onnxruntime itself refuses the row
    done, answers = roll_out(tmp_path, "failing")
    assert done["rollout"]["state"] == "rolled_back", (done["rollout"]["state"], done["rollout"]["reason"])
    failed = {name: g for name, g in shadow_verdicts(done).items() if g["verdict"] == "fail"}
    assert set(failed) <= {"error_rate_vs_baseline", "error_rate_absolute"} and failed, failed
    for gate in failed.values():
        assert 0.02 < gate["observed"] < 0.10 and gate["samples"] >= 100
    no_user_saw_the_candidate(answers)


def test_a_healthy_candidate_is_promoted_through_every_stage(tmp_path: Path) -> None:
    done, answers = roll_out(tmp_path, "healthy")
    assert done["rollout"]["state"] == "promoted", (done["rollout"]["state"], done["rollout"]["reason"])
    decisions = [e for e in done["events"] if e["kind"] in ("advanced", "promoted")]
    assert [e["stage"] for e in decisions] == ["canary-50", "full", "full"]
    for event in decisions:
        assert all(g["verdict"] == "pass" for g in event["gates"])
    assert answers[("2", 200)] > 0 and not [k for k in answers if k[1] != 200]


def test_readme_fast_plan_promotes_credit_v2_whose_agreement_is_above_its_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = [
        json.loads(line) for line in (ROOT / "examples" / "labelled_traffic.jsonl").read_text().splitlines()
    ]
    server = ServeProcess(
        [str(ROOT / "examples" / "models"), "--state-dir", str(tmp_path / "state"), "--admin-token", TOKEN],
        log_path=tmp_path / "serve.log",
    )
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    monkeypatch.chdir(ROOT)  # the README's relative plan path
    stop = threading.Event()

    def drive(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                body = {
                    "inputs": [
                        {
                            "name": "input",
                            "datatype": "FP32",
                            "shape": [1, 20],
                            "data": rng.choice(rows)["input"],
                        }
                    ]
                }
                client.post(
                    f"{server.url}/v2/models/credit/infer",
                    json=body,
                    headers={"x-user-id": f"u{rng.randrange(10**9)}"},
                )

    threads = [threading.Thread(target=drive, args=(i,), daemon=True) for i in range(3)]
    try:
        server.start().wait_ready()
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        assert (
            main(
                ["rollout", "start", "credit", "2", "--plan", "examples/plans/fast.toml", "--url", server.url]
            )
            == 0
        )
        deadline = time.monotonic() + 240
        while (done := admin(server.url, "GET", "/admin/models/credit/rollout"))["rollout"]["active"]:
            assert time.monotonic() < deadline, (done["rollout"]["state"], done["rollout"]["reason"])
            time.sleep(0.2)
        assert main(["rollout", "status", "credit", "--url", server.url]) == 0
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        server.stop()
    assert done["rollout"]["state"] == "promoted", (done["rollout"]["state"], done["rollout"]["reason"])
    shadow = next(e for e in done["events"] if e["kind"] == "advanced" and e["stage"] == "canary-5")
    agreement = next(g for g in shadow["gates"] if g["gate"] == "shadow_agreement")
    assert agreement["verdict"] == "pass" and agreement["threshold"] == 0.85
    assert 0.8 < agreement["observed"] < 0.92 and agreement["interval"][0] < 0.857 < agreement["interval"][1]
