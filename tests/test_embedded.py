"""The embedded example: a user's own Starlette route calls modelserve, over a real socket."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx

from modelserve.testing import serve

EXAMPLES = Path(__file__).parent.parent / "examples"
APPLICANT = [3, 60, 2, 3, 10144, 1, 3, 2, 1, 0, 4, 0, 21, 2, 1, 1, 2, 1, 1, 0]


def load_example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("embedded_app", EXAMPLES / "embedded_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_user_route_serves_through_modelserve_with_canary(tmp_path: Path) -> None:
    app = load_example().build_app(EXAMPLES / "models", state_dir=tmp_path / "state", admin_token="t")
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").json() == {"ok": True}
        first = client.post("/loans/score", json={"applicant": APPLICANT}, headers={"x-user-id": "alice"})
        assert first.status_code == 200
        assert first.headers["x-model-version"] == "1" and first.headers["x-route-reason"] == "stable"
        assert 0.0 <= first.json()["bad_risk_probability"] <= 1.0

        auth = {"authorization": "Bearer t"}
        assert (
            client.post("/admin/models/credit/stage", json={"version": "2"}, headers=auth).status_code == 200
        )
        assert (
            client.post("/admin/models/credit/canary", json={"percent": 100}, headers=auth).status_code == 200
        )
        canary = client.post("/loans/score", json={"applicant": APPLICANT}, headers={"x-user-id": "alice"})
        assert canary.headers["x-model-version"] == "2" and canary.headers["x-route-reason"] == "canary"
        # The same model answers the V2 protocol on the same app.
        v2 = client.post(
            "/v2/models/credit/infer",
            json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 20], "data": APPLICANT}]},
            headers={"x-user-id": "alice"},
        )
        assert v2.headers["x-model-version"] == "2"
        bad = client.post("/loans/score", json={"applicant": APPLICANT[:5]})
        assert bad.status_code == 400 and "error" in bad.json()
