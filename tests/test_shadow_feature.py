"""The shadow feature over HTTP: a real uvicorn server, real tiny ONNX models, the real CLI."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import create_app

TOKEN = "shadow-token"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROWS = 10  # rows per request


def linear_threshold(path: Path, shift: float) -> Path:
    """16 -> 2 softmax whose class is 0 exactly when input[:, 0] > shift (the other inputs are ignored)."""
    w = np.zeros((16, 2), dtype=np.float32)
    w[0] = [1.0, -1.0]
    b = np.array([-shift, shift], dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["h"]),
         helper.make_node("Softmax", ["h"], ["probabilities"], axis=-1)],
        "threshold",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )  # fmt: skip
    return _save(graph, path)


def fails_on_real_inputs(path: Path) -> Path:
    """Loads and warms up (warm-up feeds zeros) but fails in onnxruntime on any non-zero input.

    The input is reshaped to [-1, 16 + 3 * ceil(min(sum|x|, 1))]: 16 columns for zeros, 19 (which
    does not divide 16) otherwise, so the Reshape raises at run time.
    """
    one = numpy_helper.from_array(np.array(1.0, dtype=np.float32), "one")
    three = numpy_helper.from_array(np.array(3.0, dtype=np.float32), "three")
    sixteen = numpy_helper.from_array(np.array(16.0, dtype=np.float32), "sixteen")
    minus_one = numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus_one")
    w = numpy_helper.from_array(np.ones((16, 2), dtype=np.float32), "w")
    nodes = [
        helper.make_node("Abs", ["input"], ["abs"]),
        helper.make_node("ReduceSum", ["abs"], ["total"], keepdims=0),
        helper.make_node("Min", ["total", "one"], ["clipped"]),
        helper.make_node("Ceil", ["clipped"], ["flag"]),
        helper.make_node("Mul", ["flag", "three"], ["extra"]),
        helper.make_node("Add", ["extra", "sixteen"], ["width_f"]),
        helper.make_node("Cast", ["width_f"], ["width"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["width", "axes_0"], ["width_1d"]),
        helper.make_node("Concat", ["minus_one", "width_1d"], ["shape"], axis=0),
        helper.make_node("Reshape", ["input", "shape"], ["reshaped"]),
        helper.make_node("MatMul", ["reshaped", "w"], ["h"]),
        helper.make_node("Softmax", ["h"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        initializer=[
            one, three, sixteen, minus_one, w, numpy_helper.from_array(np.array([0], np.int64), "axes_0"),
        ],
    )  # fmt: skip
    return _save(graph, path)


def _save(graph: Any, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """`fraud` 1 (live) and 2: MLPs; `thresh` 1 (x0 > 0) and 2 (x0 > 0.2); `fails` 1 ok, 2 always raises."""
    root = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2, "3": 1}})
    linear_threshold(root / "thresh" / "1" / "model.onnx", 0.0)
    linear_threshold(root / "thresh" / "2" / "model.onnx", 0.2)
    testing.mlp(root / "fails" / "1" / "model.onnx", seed=1)
    fails_on_real_inputs(root / "fails" / "2" / "model.onnx")
    for name in ("fraud", "thresh", "fails"):
        (root / name / "config.toml").write_text(
            'live = "1"\n[shadow]\nmax_in_flight = 64\ntimeout_ms = 5000\n'
        )
    return root


@pytest.fixture
def server(repo: Path, tmp_path: Path) -> Iterator[tuple[Any, httpx.Client, Any]]:
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    services = app.state.services
    # These tests count every shadow run; shedding under loop lag (a busy host) is tested on its own.
    services.shadow.max_loop_lag_s = math.inf
    with testing.serve(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        yield running, client, services


def test_shadows_are_shed_and_counted_while_the_event_loop_lags(repo: Path, tmp_path: Path) -> None:
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    services = app.state.services
    with testing.serve(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert _shadow(client, "fraud", "2").status_code == 200
        x = np.random.default_rng(9).normal(size=(1, 16)).astype(np.float32)
        services.shadow.max_loop_lag_s = -1.0  # any lag at all counts as behind
        for _ in range(5):
            assert _infer(client, "fraud", x).status_code == 200
        assert services.shadow.runner.wait_idle(30)
        stats = client.get("/admin/models/fraud", headers=AUTH).json()["shadow"]["stats"]["2"]
        assert (stats["samples"], stats["dropped"]) == (0, 5)


def slow_inline_model(path: Path, products: int = 12) -> Path:
    """16 -> 2 softmax that first multiplies 1024 x 1024 matrices made from the input `products`
    times (~20 ms each here): a model that holds the event loop when it runs inline."""
    rng = np.random.default_rng(0)
    size = 1024
    nodes = [
        helper.make_node("MatMul", ["input", "widen"], ["row"]),
        helper.make_node("Transpose", ["row"], ["column"]),
        helper.make_node("MatMul", ["column", "row"], ["m0"]),
        *(helper.make_node("MatMul", [f"m{i}", "eye"], [f"m{i + 1}"]) for i in range(products)),
        helper.make_node("ReduceSum", [f"m{products}"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("MatMul", ["input", "head"], ["scores"]),
        helper.make_node("Add", ["scores", "nothing"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2])],
        initializer=[
            numpy_helper.from_array(rng.normal(0, 0.01, (16, size)).astype(np.float32), "widen"),
            numpy_helper.from_array(np.eye(size, dtype=np.float32), "eye"),
            numpy_helper.from_array(rng.normal(0, 1, (16, 2)).astype(np.float32), "head"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )  # fmt: skip
    return _save(graph, path)


def test_shadows_are_shed_and_counted_while_the_server_itself_holds_its_loop(tmp_path: Path) -> None:
    # The live version runs inline on the event loop for ~250 ms a request: the server's own work
    # makes the loop late, so its shadows are shed (counted), and every primary still answers.
    repo = tmp_path / "models"
    for version in ("1", "2"):
        slow_inline_model(repo / "slow" / version / "model.onnx")
    (repo / "slow" / "config.toml").write_text(
        'live = "1"\n[serving]\nexecution = "inline"\nwarmup_runs = 1\n[shadow]\nmax_in_flight = 64\n'
    )
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    services = app.state.services
    x = np.random.default_rng(3).normal(size=(1, 16)).astype(np.float32)
    with testing.serve(app) as running, httpx.Client(base_url=running.url, timeout=60) as client:
        assert _shadow(client, "slow", "2").status_code == 200
        answers = [_infer(client, "slow", x).status_code for _ in range(8)]
        assert services.shadow.runner.wait_idle(60)
        shadow = client.get("/admin/models/slow", headers=AUTH).json()["shadow"]
    assert answers == [200] * 8
    stats = shadow["stats"]["2"]
    assert shadow["shed_behind"] >= 1 and stats["dropped"] >= shadow["shed_behind"]
    assert stats["samples"] + stats["dropped"] + stats["errors"] + stats["timeouts"] == 8


def _infer(client: httpx.Client, model: str, x: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]
    }
    return client.post(f"/v2/models/{model}/infer", json=body)


def _shadow(client: httpx.Client, model: str, version: str, rate: float = 1.0) -> httpx.Response:
    staged = client.post(f"/admin/models/{model}/stage", json={"version": version}, headers=AUTH)
    assert staged.status_code == 200, staged.text
    return client.post(
        f"/admin/models/{model}/shadow", json={"versions": [version], "rate": rate}, headers=AUTH
    )


def _report(client: httpx.Client, services: Any, model: str, query: str = "") -> dict[str, Any]:
    assert services.shadow.runner.wait_idle(30)
    response = client.get(f"/admin/models/{model}/shadow/report{query}", headers=AUTH)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_shadowed_response_is_byte_identical_and_names_the_primary_version(server: Any) -> None:
    _, client, services = server
    x = np.random.default_rng(3).normal(size=(ROWS, 16)).astype(np.float32)
    before = _infer(client, "fraud", x)
    assert _shadow(client, "fraud", "2").status_code == 200
    after = _infer(client, "fraud", x)
    assert after.status_code == 200
    assert after.content == before.content
    assert after.headers["x-model-version"] == "1"
    shadow = _report(client, services, "fraud")["shadows"][0]
    assert (shadow["shadow_version"], shadow["samples"]) == ("2", 1)


def test_measured_agreement_matches_the_designed_fraction_within_its_interval(server: Any) -> None:
    _, client, services = server
    assert _shadow(client, "thresh", "2").status_code == 200
    x0 = -1.0 + 2.0 * (np.arange(400) + 0.5) / 400  # evenly spread: exactly 10% fall in (0, 0.2]
    designed = 1.0 - float(np.mean((x0 > 0) & (x0 <= 0.2)))
    inputs = np.zeros((400, 16), dtype=np.float32)
    inputs[:, 0] = x0
    np.random.default_rng(4).shuffle(inputs)
    for start in range(0, 400, ROWS):
        assert _infer(client, "thresh", inputs[start : start + ROWS]).status_code == 200
        # One shadow run at a time: a busy host's slow shadow threads never fill the admission
        # bound, so every row is compared (the test measures agreement, not shedding).
        assert services.shadow.runner.wait_idle(30)
    shadow = _report(client, services, "thresh")["shadows"][0]
    low, high = shadow["agreement_interval"]
    assert shadow["rows"] == 400
    assert low <= designed <= high
    assert shadow["agreement_rate"] == pytest.approx(designed)
    assert shadow["disagreements"]
    for example in shadow["disagreements"]:  # real disagreeing requests: some row has 0 < x0 <= 0.2
        column = np.array(example["inputs"]["input"])[:, 0]
        assert np.any((column > 0) & (column <= 0.2))


def test_a_shadow_that_raises_never_causes_a_primary_error_and_is_counted(server: Any) -> None:
    _, client, services = server
    assert _shadow(client, "fails", "2").status_code == 200
    x = np.random.default_rng(5).normal(size=(2, 16)).astype(np.float32)
    statuses = [_infer(client, "fails", x).status_code for _ in range(30)]
    assert statuses == [200] * 30
    report = _report(client, services, "fails", "?min_samples=30")
    shadow = report["shadows"][0]
    assert (shadow["errors"], shadow["samples"]) == (30, 0)
    assert "fails version 2" in shadow["last_error"]
    assert report["primary"]["error_rate"] == 0.0
    assert shadow["recommendation"]["verdict"] == "do not promote"
    assert services.windows.totals("fails", "2", "shadow").errors == 30
    assert services.windows.totals("fails", "1", "primary").errors == 0


def test_report_recommends_promotion_only_with_enough_agreeing_samples(server: Any) -> None:
    _, client, services = server
    assert _shadow(client, "fraud", "3").status_code == 200  # version 3 has version 1's weights
    x = np.random.default_rng(6).normal(size=(ROWS, 16)).astype(np.float32)
    # A p95 needs 100 samples, whatever the stage's minimum; a busy host sheds some shadows.
    for _ in range(500):
        assert _infer(client, "fraud", x).status_code == 200
        if services.shadow.runner.stats("fraud", "3").snapshot()["samples"] >= 100:
            break
    # latency is not under test here (it depends on how busy the machine is): a generous ratio
    enough = _report(client, services, "fraud", "?min_samples=20&max_latency_ratio=1000")["shadows"][0]
    assert enough["agreement_rate"] == 1.0
    assert enough["recommendation"]["verdict"] == "promote", enough["recommendation"]["checks"]
    checks = {c["name"]: c for c in enough["recommendation"]["checks"]}
    assert checks["shadow_agreement"]["observed"] == 1.0
    assert checks["shadow_agreement"]["samples"] == enough["samples"] * ROWS  # agreement counts rows
    assert checks["p95_vs_baseline"]["samples"] >= 100 and checks["p95_vs_baseline"]["verdict"] == "pass"
    default = _report(client, services, "fraud")["shadows"][0]
    assert default["recommendation"]["verdict"] == "not enough data"


def test_jsonl_sink_holds_one_record_per_completed_comparison(server: Any, tmp_path: Path) -> None:
    _, client, services = server
    assert _shadow(client, "fraud", "2").status_code == 200
    x = np.random.default_rng(7).normal(size=(ROWS, 16)).astype(np.float32)
    for _ in range(25):
        _infer(client, "fraud", x)
    samples = _report(client, services, "fraud")["shadows"][0]["samples"]
    services.shadow.sink.close()  # flushes every queued record
    lines = (tmp_path / "state" / "shadow" / "comparisons.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert samples == 25
    assert sum(r["agree"] is not None for r in records) == samples
    assert {(r["model"], r["primary_version"], r["shadow_version"]) for r in records} == {("fraud", "1", "2")}


def test_shadow_admin_rejects_versions_that_are_not_loaded_or_live(server: Any) -> None:
    _, client, _ = server
    missing = client.post("/admin/models/fraud/shadow", json={"versions": ["2"]}, headers=AUTH)
    assert missing.status_code == 400
    assert "not loaded and ready" in missing.json()["error"]
    live = client.post("/admin/models/fraud/shadow", json={"versions": ["1"]}, headers=AUTH)
    assert live.status_code == 400 and "live version" in live.json()["error"]
    bad_rate = _shadow(client, "fraud", "2", rate=1.5)
    assert bad_rate.status_code == 400
    assert client.post("/admin/models/fraud/shadow", json={"versions": ["2"]}).status_code == 401


def test_switching_shadow_off_stops_shadow_runs_and_status_summarises(server: Any) -> None:
    _, client, services = server
    assert _shadow(client, "fraud", "2").status_code == 200
    x = np.random.default_rng(8).normal(size=(1, 16)).astype(np.float32)
    _infer(client, "fraud", x)
    off = client.post("/admin/models/fraud/shadow", json={"off": True}, headers=AUTH)
    assert off.status_code == 200 and off.json()["shadow"]["versions"] == []
    _infer(client, "fraud", x)
    assert services.shadow.runner.wait_idle(30)
    status = client.get("/admin/models/fraud", headers=AUTH).json()["shadow"]
    assert status["stats"]["2"]["samples"] == 1
    assert status["sample_rate"] == 1.0


def _cli(running: Any, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MODELSERVE_ADMIN_TOKEN": TOKEN}
    return subprocess.run(
        [sys.executable, "-m", "modelserve.cli", "shadow", *argv, "--url", running.url],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def test_cli_shadows_reports_and_switches_off_against_a_real_server(server: Any) -> None:
    running, client, services = server
    assert client.post("/admin/models/fraud/stage", json={"version": "2"}, headers=AUTH).status_code == 200
    on = _cli(running, "start", "fraud", "2", "--rate", "0.5")
    assert on.returncode == 0, on.stderr
    assert "shadowing 2 at 50%" in on.stdout
    assert services.policies.get("fraud").shadow_versions == ("2",)
    x = np.random.default_rng(9).normal(size=(ROWS, 16)).astype(np.float32)
    for _ in range(5):
        _infer(client, "fraud", x)
    assert services.shadow.runner.wait_idle(30)
    table = _cli(running, "report", "fraud")
    assert table.returncode == 0, table.stderr
    assert "shadow version 2" in table.stdout and "verdict: NOT ENOUGH DATA" in table.stdout
    assert "of 1000 shadow comparisons" in table.stdout  # the default plan's shadow stage minimum
    raw = _cli(running, "report", "fraud", "--json", "--min-samples", "1")
    checks = {c["name"]: c for c in json.loads(raw.stdout)["shadows"][0]["recommendation"]["checks"]}
    assert "of 200" not in checks["shadow_agreement"]["detail"]  # judged: its minimum is now 1
    off = _cli(running, "stop", "fraud")
    assert off.returncode == 0 and "shadow off" in off.stdout
    assert services.policies.get("fraud").shadow_versions == ()
    missing = _cli(running, "start", "fraud", "9")
    assert missing.returncode == 1 and "not loaded and ready" in missing.stderr


def test_on_loop_shadows_of_a_microsecond_model_are_compared_before_the_next_request(
    repo: Path, tmp_path: Path
) -> None:
    (repo / "fraud" / "config.toml").write_text('live = "1"\n[shadow]\non_loop = true\n')
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    with testing.serve(app) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        services = app.state.services
        services.shadow.max_loop_lag_s = math.inf  # counts every run: never shed on a busy host
        assert _shadow(client, "fraud", "2").status_code == 200
        assert services.registry.slots("fraud").get("2").inline
        for expected in (1, 2, 3):
            assert _infer(client, "fraud", np.ones((1, 16), np.float32)).status_code == 200
            client.get("/v2/health/live")  # served by the same loop, after the shadow ran on it
            assert services.shadow.runner.stats("fraud", "2").snapshot()["samples"] == expected
