"""Readiness means ready: a model folder that does not fit the layout keeps `/v2/health/ready` at 503,
named (log, status, ready body) with what was expected, until the model is really loaded."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import httpx
import pytest

from modelserve import testing
from modelserve.config import ServerConfig
from modelserve.errors import ConfigError
from modelserve.server.app import ModelServe, create_app

AUTH = {"authorization": "Bearer t"}


@pytest.mark.parametrize(
    ("misplaced", "expected"),
    [
        ("iris/1/iris.onnx", "repo/iris/1/model.onnx"),
        ("iris/model.onnx", "repo/iris/1/model.onnx"),
        ("iris/v1/model.onnx", "repo/iris/1/model.onnx"),
    ],
)
def test_a_misplaced_model_is_named_and_ready_stays_503_until_it_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, misplaced: str, expected: str
) -> None:
    repo = testing.repository(tmp_path / "repo", {"credit": {"1": 1}})
    testing.mlp(repo / misplaced, seed=3)
    app = create_app(ServerConfig(repository=repo, state_dir=tmp_path / "state", admin_token="t"))
    with (
        caplog.at_level(logging.ERROR, "modelserve"),
        testing.serve(app) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503
        assert list(ready.json()["missing"]) == ["iris"]
        assert expected in ready.json()["missing"]["iris"]
        status = client.get("/admin/models", headers=AUTH).json()
        assert expected in status["load_errors"]["iris"]
        assert client.post("/v2/models/credit/infer", json=request()).status_code == 200  # others serve

        # The operator fixes the layout and loads the model: now the server is ready.
        (repo / "iris" / "1").mkdir(parents=True, exist_ok=True)
        shutil.move(repo / misplaced, repo / "iris" / "1" / "model.onnx")
        assert client.post("/v2/repository/models/iris/load", headers=AUTH).status_code == 200
        assert client.get("/v2/health/ready").json() == {"ready": True}
    logged = [r.getMessage() for r in caplog.records if r.name.startswith("modelserve")]
    assert any(m.startswith("model iris: ") and expected in m for m in logged), logged


def request() -> dict[str, object]:
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]}


def test_a_model_that_fails_to_load_keeps_ready_503_with_the_reason(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "repo", {"credit": {"1": 1}})
    testing.zipmap_classifier(repo / "iris" / "1" / "model.onnx")
    app = create_app(ServerConfig(repository=repo, state_dir=None))
    with testing.serve(app) as server:
        ready = httpx.get(f"{server.url}/v2/health/ready", timeout=30)
    assert ready.status_code == 503
    assert "zipmap" in ready.json()["missing"]["iris"]


def test_ready_without_the_lifespan_says_how_to_run_it(tmp_path: Path) -> None:
    repo = testing.repository(tmp_path / "repo", {"credit": {"1": 1}})
    app = ModelServe(ServerConfig(repository=repo, state_dir=None)).app()
    with testing.serve(app, lifespan="off") as server:
        ready = httpx.get(f"{server.url}/v2/health/ready", timeout=30)
        infer = httpx.post(f"{server.url}/v2/models/credit/infer", json=request(), timeout=30)
    assert ready.status_code == 503 and "lifespan=ms.lifespan" in ready.json()["error"]
    assert infer.status_code == 503 and "lifespan=ms.lifespan" in infer.json()["error"]


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_empty_repository_fails_startup_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    ms = ModelServe(ServerConfig(repository=tmp_path / "repo", state_dir=None))
    with pytest.raises(ConfigError, match="is empty") as raised:
        async with ms.lifespan():
            pass
    assert "\n" not in str(raised.value)
