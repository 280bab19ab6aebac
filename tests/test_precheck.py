"""The pre-promotion check: labelled rows replayed through live and candidate before the switch.

Real models: the example credit versions, and credit v1 with its label output inverted (fast, healthy,
wrong), with the example's 300 labelled rows, through a real server and the CLI.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from modelserve import testing
from modelserve.cli import main
from modelserve.config import ServerConfig
from modelserve.server.app import create_app

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ROWS = EXAMPLES / "labelled_traffic.jsonl"
TOKEN = "check-secret"
AUTH = {"authorization": f"Bearer {TOKEN}"}


def inverted_v1(repo: Path, version: str) -> None:
    """credit v1 whose `label` output says the opposite (1 - label)."""
    model = onnx.load(str(EXAMPLES / "models" / "credit" / "1" / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = ["label_v1" if name == "label" else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(1, dtype=np.int64), "one"))
    model.graph.node.append(helper.make_node("Sub", ["one", "label_v1"], ["label"]))
    (repo / "credit" / version).mkdir()
    onnx.save(model, str(repo / "credit" / version / "model.onnx"))


def test_promote_with_a_check_refuses_a_wrong_candidate_and_promotes_an_accurate_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES / "models", repo)
    inverted_v1(repo, "3")
    shutil.copytree(repo / "credit" / "1", repo / "credit" / "4")  # an equally accurate copy
    monkeypatch.setenv("MODELSERVE_ADMIN_TOKEN", TOKEN)
    config = ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token=TOKEN)
    with testing.serve(create_app(config)) as server:
        url = server.url
        assert main(["stage", "credit", "3", "--url", url]) == 0
        assert main(["promote", "credit", "--check", str(ROWS), "--url", url]) == 1
        refused = capsys.readouterr().err
        live_after_refusal = httpx.get(f"{url}/admin/models/credit", headers=AUTH).json()["live_version"]
        too_few = httpx.post(
            f"{url}/admin/models/credit/promote",
            json={"check": {"rows": [{"input": [0.0] * 20, "label": 0}] * 10}},
            headers=AUTH,
            timeout=30,
        )
        assert main(["stage", "credit", "4", "--url", url]) == 0
        capsys.readouterr()
        assert main(["promote", "credit", "--check", str(ROWS), "--json", "--url", url]) == 0
        promoted = capsys.readouterr().out
        history = httpx.get(f"{url}/admin/models/credit/history", headers=AUTH).json()
    assert "409: pre-promotion check of 3 on 300 labelled rows: fail" in refused
    assert "accuracy_vs_live: fail" in refused and "--force --reason" in refused
    assert live_after_refusal == "1"
    assert too_few.status_code == 409 and "inconclusive" in too_few.json()["error"]
    assert '"verdict": "pass"' in promoted and '"to_version": "4"' in promoted
    entry = [e for e in history["entries"] if e["action"] == "promote"][-1]
    assert entry["detail"].startswith("pre-promotion check of 4 on 300 labelled rows: pass")
    gates = {g["gate"]: g for g in json.loads(promoted)["check"]["gates"]}
    accuracy = gates["accuracy_vs_live"]
    assert accuracy["samples"] == accuracy["baseline_samples"] == 300
    assert accuracy["observed"] == accuracy["baseline"]  # the same model answers the same
    assert gates["error_rate_absolute"]["observed"] == 0.0
