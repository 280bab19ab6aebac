"""Monitoring through a real server: labels joined to versions, drift from a file reference, /ui JSON."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

EXAMPLES = Path(__file__).parent.parent / "examples"
TOKEN = "secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROWS = [json.loads(line) for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()]


def credit_repo(tmp_path: Path, monitoring: str) -> Path:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    shutil.copy(EXAMPLES / "labelled_traffic.jsonl", repo / "credit" / "reference.jsonl")
    config = repo / "credit" / "config.toml"
    config.write_text(config.read_text() + "\n[monitoring]\n" + monitoring)
    return repo


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[httpx.Client, ModelServe]]:
    repo = credit_repo(tmp_path, 'reference = "reference.jsonl"\nmin_samples = 100\nwindow_s = 60.0\n')
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN))
    assert modelserve.services.monitoring is not None
    modelserve.services.monitoring.history_interval_s = 0.2
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        yield client, modelserve


def infer(client: httpx.Client, row: list[float], request_id: str, version: str | None = None) -> Any:
    path = "/v2/models/credit/infer" if version is None else f"/v2/models/credit/versions/{version}/infer"
    body = {
        "id": request_id,
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row}],
    }
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o["data"] for o in response.json()["outputs"]}
    return response.headers["x-model-version"], outputs["label"][0]


def snapshot_when(client: httpx.Client, ready: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    """Poll the page's JSON until `ready(snapshot)` (the monitor works in a background task)."""
    deadline = time.monotonic() + timeout_s
    while True:
        snapshot = client.get("/ui/api/models/credit").json()
        if ready(snapshot) or time.monotonic() > deadline:
            return snapshot
        time.sleep(0.1)


def test_accuracy_by_version_from_posted_labels_matches_a_direct_computation(server: Any) -> None:
    client, _ = server
    assert client.post("/admin/models/credit/stage", json={"version": "2"}, headers=AUTH).status_code == 200
    right = {"1": 0, "2": 0}
    labelled = {"1": 0, "2": 0}
    for i, row in enumerate(ROWS[:120]):
        version, predicted = infer(client, row["input"], f"r{i}", version="1" if i % 2 else "2")
        right[version] += int(predicted == row["label"])
        labelled[version] += 1
    items = [{"request_id": f"r{i}", "label": row["label"]} for i, row in enumerate(ROWS[:120])]
    answer = client.post("/v2/models/credit/labels", json={"labels": items}, headers=AUTH).json()
    assert answer == {"accepted": 120, "unknown": 0, "duplicate": 0}
    again = client.post("/v2/models/credit/labels", json=items[0], headers=AUTH).json()
    assert again == {"accepted": 0, "unknown": 0, "duplicate": 1}
    versions = snapshot_when(client, lambda s: len(s["monitoring"]["versions"]) == 2)["monitoring"][
        "versions"
    ]
    for version in ("1", "2"):
        accuracy = versions[version]["accuracy"]
        assert accuracy["samples"] == labelled[version] == 60
        assert accuracy["correct"] == right[version]
        low, high = accuracy["accuracy_interval"]
        assert low < right[version] / 60 < high


def test_labels_join_experiment_routed_requests_by_the_client_id_or_the_server_issued_one(
    server: Any,
) -> None:
    client, _ = server
    assert client.post("/admin/models/credit/stage", json={"version": "2"}, headers=AUTH).status_code == 200
    started = client.post(
        "/admin/models/credit/experiment", json={"arms": ["1", "2"], "metric": "binary"}, headers=AUTH
    )
    assert started.status_code == 200, started.text
    issued = {}
    for i, row in enumerate(ROWS[:4]):
        body = {
            "id": f"c{i}",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row["input"]}],
        }
        response = client.post("/v2/models/credit/infer", json=body, headers={"x-user-id": f"user-{i}"})
        assert response.headers["x-route-reason"] == "experiment"
        issued[i] = response.headers["x-request-id"]
        assert issued[i] != f"c{i}" and response.json()["id"] == f"c{i}"  # the join id is the server's
    by_client = [{"request_id": f"c{i}", "label": ROWS[i]["label"]} for i in (0, 1)]
    by_server = [{"request_id": issued[i], "label": ROWS[i]["label"]} for i in (2, 3)]
    answer = client.post("/v2/models/credit/labels", json={"labels": by_client + by_server}, headers=AUTH)
    assert answer.json() == {"accepted": 4, "unknown": 0, "duplicate": 0}
    # One request is labelled once, whichever of its two ids the second label names.
    again = [{"request_id": issued[0], "label": 1}, {"request_id": "c2", "label": 1}]
    answer = client.post("/v2/models/credit/labels", json={"labels": again}, headers=AUTH)
    assert answer.json() == {"accepted": 0, "unknown": 0, "duplicate": 2}
    # Experiment outcomes still join by the server-issued id only.
    feedback = client.post("/v2/models/credit/feedback", json={"request_id": "c1", "value": 1}, headers=AUTH)
    assert feedback.json()["unknown"] == 1
    feedback = client.post(
        "/v2/models/credit/feedback", json={"request_id": issued[1], "value": 1}, headers=AUTH
    )
    assert feedback.json()["accepted"] == 1


def test_label_errors_are_typed(server: Any) -> None:
    client, _ = server
    assert client.post("/v2/models/credit/labels", json={"request_id": "x", "label": 1}).status_code == 401
    response = client.post("/v2/models/credit/labels", json={"request_id": "x"}, headers=AUTH)
    assert response.status_code == 400 and "label" in response.json()["error"]
    unknown = client.post("/v2/models/credit/labels", json={"request_id": "nope", "label": 1}, headers=AUTH)
    assert unknown.json() == {"accepted": 0, "unknown": 1, "duplicate": 0}
    infer(client, ROWS[0]["input"], "two-rows-expected")
    wrong = client.post(
        "/v2/models/credit/labels", json={"request_id": "two-rows-expected", "label": [0, 1]}, headers=AUTH
    )
    assert wrong.status_code == 400 and "one value per row" in wrong.json()["error"]
    assert (
        client.post("/v2/models/nope/labels", json={"request_id": "x", "label": 1}, headers=AUTH).status_code
        == 404
    )


def test_scaling_one_feature_drifts_it_against_the_file_reference(server: Any) -> None:
    client, _ = server
    for i, row in enumerate(ROWS[:150]):
        scaled = list(row["input"])
        scaled[4] *= 3.0  # the credit amount triples
        infer(client, scaled, f"d{i}")

    def judged(snapshot: dict[str, Any]) -> bool:
        version = snapshot["monitoring"]["versions"].get("1")
        return version is not None and any(d["drifted"] is not None for d in version["drift"]["inputs"])

    version = snapshot_when(client, judged)["monitoring"]["versions"]["1"]
    assert version["reference"] == {"state": "ready", "source": "file", "rows": 300}
    drifted = [d["column"] for d in version["drift"]["inputs"] if d["drifted"]]
    assert drifted == ["input[4]"], (drifted, version["drift"]["inputs"][0])
    status = client.get("/admin/models/credit", headers=AUTH).json()
    assert "input[4]" in status["monitoring"]["versions"]["1"]["drifted"]


def test_the_page_and_its_json_are_served_without_a_token(server: Any) -> None:
    client, _ = server
    page = client.get("/ui", follow_redirects=True)
    assert page.status_code == 200 and "modelserve" in page.text and "uPlot.iife.min.js" in page.text
    script = client.get("/ui/static/uPlot.iife.min.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert client.get("/ui/static/../app.py").status_code == 404
    assert client.get("/ui/api/models").json()["models"] == ["credit"]
    for i, row in enumerate(ROWS[:20]):
        infer(client, row["input"], f"h{i}")
    snapshot = snapshot_when(client, lambda s: bool(s["monitoring"]["history"].get("1", {}).get("t")))
    assert snapshot["split"]["declared"] == {"1": 100.0}
    assert snapshot["status"]["live_version"] == "1"
    assert snapshot["monitoring"]["history"]["1"]["t"]
    assert client.get("/ui/api/models/nope").status_code == 404


def _keys(document: Any) -> Iterator[str]:
    if isinstance(document, dict):
        for key, value in document.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(document, list):
        for item in document:
            yield from _keys(item)


def test_every_json_duration_is_in_seconds_with_the_unit_in_its_key(server: Any) -> None:
    client, _ = server
    assert client.post("/admin/models/credit/stage", json={"version": "2"}, headers=AUTH).status_code == 200
    shadow = client.post("/admin/models/credit/shadow", json={"versions": ["2"], "rate": 1.0}, headers=AUTH)
    assert shadow.status_code == 200, shadow.text
    for i, row in enumerate(ROWS[:20]):
        infer(client, row["input"], f"u{i}")
    snapshot = snapshot_when(
        client,
        lambda s: any(x is not None for x in s["monitoring"]["history"].get("1", {}).get("p50_s", []))
        and bool(s["shadow"]["shadows"])
        and s["shadow"]["shadows"][0]["samples"] > 0,
    )
    report = client.get("/admin/models/credit/shadow/report", headers=AUTH).json()
    status = client.get("/admin/models/credit", headers=AUTH).json()
    for document in (snapshot, report, status):
        assert not [key for key in _keys(document) if key.endswith("_ms")]
    p50 = [x for x in snapshot["monitoring"]["history"]["1"]["p50_s"] if x is not None]
    assert p50 and 0 < p50[-1] < 1  # a tiny model answers in well under a second
    latency = report["shadows"][0]["primary_latency_s"]
    assert 0 < latency["p50"] < 1 and "loop_lag_s" in str(status)


def test_metrics_carry_prediction_distribution_drift_and_rollout_series(server: Any) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    client, _ = server
    for i, row in enumerate(ROWS[:150]):
        infer(client, row["input"], f"m{i}")
    plan = {"stages": [{"name": "canary", "weight": 10, "min_duration_s": 60}]}
    started = client.post("/admin/models/credit/rollout", json={"version": "2", "plan": plan}, headers=AUTH)
    assert started.status_code == 200, started.text
    assert client.post("/admin/models/credit/rollout/abort", headers=AUTH).status_code == 200
    snapshot_when(
        client,
        lambda s: any(d["drifted"] is not None for d in s["monitoring"]["versions"]["1"]["drift"]["inputs"]),
    )
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    buckets = [s for s in samples["modelserve_prediction_value_bucket"] if s.labels["le"] == "+Inf"]
    assert {(s.labels["version"], s.labels["output"]) for s in buckets} >= {("1", "probabilities[1]")}
    assert sum(s.value for s in buckets if s.labels["output"] == "probabilities[1]") == 150
    classes = {s.labels["class"]: s.value for s in samples["modelserve_prediction_class_total"]}
    assert sum(classes.values()) == 150
    assert {s.labels["column"] for s in samples["modelserve_drift_psi"]} >= {"input[0]", "input[19]"}
    rollouts = {s.labels["outcome"]: s.value for s in samples["modelserve_rollouts_total"]}
    assert rollouts["started"] == 1 and rollouts["aborted"] == 1
    assert "modelserve_requests_total" in samples  # the registry's other collectors are still there


def test_a_read_token_guards_the_json_and_the_feedback_token_may_post_labels(tmp_path: Path) -> None:
    repo = credit_repo(tmp_path, "min_samples = 100\n")
    config = ServerConfig(
        repository=repo, state_dir=tmp_path / "state", admin_token="a", read_token="r", feedback_token="f"
    )
    with testing.serve(ModelServe(config).app()) as running, httpx.Client(base_url=running.url) as client:
        assert client.get("/ui/").status_code == 200  # the static page itself is open
        assert client.get("/ui/api/models").status_code == 401
        assert client.get("/ui/api/models", headers={"authorization": "Bearer r"}).status_code == 200
        infer(client, ROWS[0]["input"], "x1")
        label = {"request_id": "x1", "label": ROWS[0]["label"]}
        assert (
            client.post(
                "/v2/models/credit/labels", json=label, headers={"authorization": "Bearer r"}
            ).status_code
            == 403
        )
        answer = client.post("/v2/models/credit/labels", json=label, headers={"authorization": "Bearer f"})
        assert answer.json()["accepted"] == 1
