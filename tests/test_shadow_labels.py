"""Shadow analysis with labels: where live v1 and shadow v2 of credit disagree, which one was right."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

EXAMPLES = Path(__file__).parent.parent / "examples"
AUTH = {"authorization": "Bearer t"}


def predict(version: str, rows: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    path = EXAMPLES / "models" / "credit" / version / "model.onnx"
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": rows})[0])


def test_labels_say_which_version_was_right_where_live_and_shadow_disagreed(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    config = repo / "credit" / "config.toml"
    # Opt in to inputs in the log; a generous deadline: a busy host must not turn runs into timeouts.
    config.write_text(config.read_text() + "\n[shadow]\nlog_inputs_rate = 1.0\ntimeout_ms = 10000\n")
    data = [json.loads(line) for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()]
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    services = modelserve.services
    assert services.shadow is not None and services.shadow.sink is not None
    services.shadow.max_loop_lag_s = math.inf  # never shed for a late event loop: compare every request
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert (
            client.post("/admin/models/credit/stage", json={"version": "2"}, headers=AUTH).status_code == 200
        )
        shadow = client.post(
            "/admin/models/credit/shadow", json={"versions": ["2"], "rate": 1.0}, headers=AUTH
        )
        assert shadow.status_code == 200
        for i, row in enumerate(data):
            body = {
                "id": f"c{i}",
                "inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row["input"]}],
            }
            response = client.post("/v2/models/credit/infer", json=body, headers={"x-user-id": f"user{i}"})
            assert response.status_code == 200
            # one at a time: the admission bound never drops
            assert services.shadow.runner.wait_settled("credit", "2", i + 1)
        labels = [{"request_id": f"c{i}", "label": row["label"]} for i, row in enumerate(data)]
        answer = client.post("/v2/models/credit/labels", json={"labels": labels}, headers=AUTH).json()
        assert answer["accepted"] == len(data)
        found = client.get("/ui/api/models/credit").json()["monitoring"]["disagreements"]
        report = client.get("/admin/models/credit/shadow/report", headers=AUTH).json()
    # The report has the same figures per time window too; they add up to the totals.
    (shadow_report,) = report["shadows"]
    windows = shadow_report["windows"]
    assert windows and all(w["end"] - w["start"] == shadow_report["window_s"] for w in windows)
    for key in ("samples", "rows", "agreeing_rows", "errors", "timeouts", "dropped"):
        assert sum(w[key] for w in windows) == shadow_report[key], key
    services.shadow.sink.close()  # flushes: the log says which requests the shadow really compared
    records = [
        json.loads(line)
        for line in (tmp_path / "state" / "shadow" / "comparisons.jsonl").read_text().splitlines()
    ]
    compared = sorted(int(r["request_id"][1:]) for r in records if r["agree"] is not None)
    assert services.shadow.sink.dropped == 0
    assert len(compared) == len(data)  # nothing shed, dropped or timed out: every request compared
    rows = np.array([data[i]["input"] for i in compared], dtype=np.float32)
    truth = np.array([data[i]["label"] for i in compared])
    v1, v2 = predict("1", rows), predict("2", rows)
    differ = v1 != v2
    assert differ.sum() > 10  # the example versions disagree on ~14% of these rows
    assert found == [
        {
            "model": "credit",
            "primary_version": "1",
            "shadow_version": "2",
            "disagreeing_rows": int(differ.sum()),
            "primary_right": int((v1 == truth)[differ].sum()),
            "shadow_right": int((v2 == truth)[differ].sum()),
            "neither_right": 0,  # binary labels: on a disagreement exactly one version is right
            "primary_right_rate": found[0]["primary_right_rate"],
            "shadow_right_rate": found[0]["shadow_right_rate"],
            "primary_right_interval": found[0]["primary_right_interval"],
            "shadow_right_interval": found[0]["shadow_right_interval"],
        }
    ]
    assert found[0]["primary_right_rate"] == (v1 == truth)[differ].mean()
    # The comparison log carries what an offline analysis needs: a pseudonymous key, both outputs, inputs.
    by_id = {int(r["request_id"][1:]): r for r in records if r["agree"] is not None}
    for position, i in enumerate(compared[:20]):
        record = by_id[i]
        assert record["key_hash"] == hashlib.sha256(f"user{i}".encode()).hexdigest()[:16]
        assert record["primary_outputs"]["label"] == [int(v1[position])]
        assert record["shadow_outputs"]["label"] == [int(v2[position])]
        assert record["inputs"]["input"] == [list(np.float32(data[i]["input"]).tolist())]


def test_inputs_stay_out_of_the_log_unless_opted_in_and_outputs_are_capped() -> None:
    from modelserve.shadow.runner import ShadowRunner, _Run

    ticket = _Run(
        id=1, deadline=0.0, inline=False, model="m", primary_version="1", shadow_version="2",
        run=lambda: {}, inputs={"x": np.zeros((1, 3))}, primary_outputs={"y": np.ones(1000)},
        primary_latency_s=0.001, request_id="r", compare="label", context=None,
    )  # fmt: skip
    record = ShadowRunner._sink_record(ticket, None, "RuntimeError: boom", False, None)
    assert "inputs" not in record and record["key_hash"] is None and record["shadow_outputs"] is None
    assert len(record["primary_outputs"]["y"]) == 256  # capped, never the client's whole tensor
