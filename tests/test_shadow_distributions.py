"""Prediction distributions of a shadow version on a real server: /metrics (role "shadow"), status, /ui.

Live credit v1 serves; v2 runs in shadow on every request. What v2 predicted unseen must show as its
own distribution, matching v2 run directly by onnxruntime over the same rows.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
from playwright.sync_api import sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

EXAMPLES = Path(__file__).parent.parent / "examples"
CHROMIUM = "/usr/bin/chromium"
AUTH = {"authorization": "Bearer t"}


def predict(version: str, rows: np.ndarray) -> np.ndarray:
    path = EXAMPLES / "models" / "credit" / version / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["label"], {"input": rows})[0])


def test_a_shadow_versions_predictions_show_in_metrics_status_and_the_page(tmp_path: Path) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    config = repo / "credit" / "config.toml"
    # No timeouts on a busy host: this test counts what the shadow predicted.
    config.write_text(config.read_text() + "\n[shadow]\ntimeout_ms = 10000\n")
    rows = np.array(
        [
            json.loads(line)["input"]
            for line in (EXAMPLES / "labelled_traffic.jsonl").read_text().splitlines()
        ],
        dtype=np.float32,
    )[:120]
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    services = modelserve.services
    assert services.shadow is not None
    services.shadow.max_loop_lag_s = math.inf  # compare every request, also on a busy host
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url, timeout=30) as client:
        assert (
            client.post("/admin/models/credit/stage", json={"version": "2"}, headers=AUTH).status_code == 200
        )
        started = client.post(
            "/admin/models/credit/shadow", json={"versions": ["2"], "rate": 1.0}, headers=AUTH
        )
        assert started.status_code == 200
        for i, row in enumerate(rows):
            body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": row.tolist()}]}
            response = client.post("/v2/models/credit/infer", json=body, headers={"x-user-id": f"u{i}"})
            assert response.status_code == 200
            # one at a time: the admission bound never drops
            assert services.shadow.runner.wait_settled("credit", "2", i + 1)
        stats = services.shadow.runner.stats("credit", "2").snapshot(examples=False)
        assert stats["samples"] == len(rows)  # every run compared: its outputs reached the monitor
        metrics = client.get("/metrics").text
        status = client.get("/admin/models/credit", headers=AUTH).json()

        v2 = predict("2", rows)
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        classes = {
            (s.labels["version"], s.labels["role"], s.labels["class"]): s.value
            for s in families["modelserve_prediction_class"].samples
            if s.labels["output"] == "label"
        }
        assert classes[("2", "shadow", "1")] == int((v2 == 1).sum())
        assert classes[("2", "shadow", "0")] == int((v2 == 0).sum())
        assert sum(v for (version, role, _), v in classes.items() if role == "primary") == len(rows)
        assert ("2", "primary", "0") not in classes  # v2 served nothing
        counts = {
            (s.labels["version"], s.labels["role"]): s.value
            for s in families["modelserve_prediction_value"].samples
            if s.name.endswith("_bucket")
            and s.labels["le"] == "+Inf"
            and s.labels["output"] == "probabilities[1]"
        }
        assert counts == {("1", "primary"): len(rows), ("2", "shadow"): len(rows)}

        shadow_status = status["monitoring"]["versions"]["2"]["predictions"]["shadow"]
        assert shadow_status["rows"] == len(rows)
        assert shadow_status["class_shares"]["label"]["1"] == (v2 == 1).mean()

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1600})
                page.goto(f"{running.url}/ui")
                page.wait_for_selector("#class-shares tr[data-role='shadow']", timeout=15_000)
                shadow_row = page.inner_text("#class-shares tr[data-role='shadow']")
                assert "v2 shadow" in shadow_row and str(len(rows)) in shadow_row
                assert page.locator("#distribution-svg rect[data-role='shadow']").count() > 0
            finally:
                browser.close()
