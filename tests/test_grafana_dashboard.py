"""docs/grafana-dashboard.json: the four update panels, drift and rollouts, on metrics `/metrics` has."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.server.app import ModelServe

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana-dashboard.json"
METRIC = re.compile(r"\bmodelserve_[a-z0-9_]+")


def queries(dashboard: dict[str, Any]) -> list[str]:
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append(target["expr"])
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            found.append(query["query"])
    return found


def exposed_names(text: str) -> set[str]:
    """Every series name the exposition can have, from its `# TYPE` lines (counters end in `_total`)."""
    names = set()
    suffixes = {"counter": ("",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        names.update(name + suffix for suffix in suffixes.get(kind, ("",)))
    return names


def test_the_dashboard_has_the_update_panels_and_drift_and_rollouts() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"] for panel in dashboard["panels"])
    wanted_titles = ("Error rate", "p99 latency", "Traffic split", "Prediction distribution")
    wanted_titles += ("drift", "Rollout")
    for wanted in wanted_titles:
        assert wanted.lower() in titles.lower(), wanted
    assert all(query.strip() for query in queries(dashboard))


def test_every_query_names_a_metric_that_metrics_really_has(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "models", {"fraud": {"1": 1, "2": 2}})
    modelserve = ModelServe(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    x = np.random.default_rng(0).normal(size=(1, 16)).astype(np.float32).ravel().tolist()
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": x}]}
    with testing.serve(modelserve.app()) as running, httpx.Client(base_url=running.url) as client:
        for _ in range(5):
            assert client.post("/v2/models/fraud/infer", json=body).status_code == 200
        text = client.get("/metrics").text
    available = exposed_names(text)
    used = {name for query in queries(json.loads(DASHBOARD.read_text())) for name in METRIC.findall(query)}
    assert len(used) >= 12
    assert used - available == set(), f"not in /metrics: {sorted(used - available)}"
