"""Embedding in FastAPI (and Starlette) end to end: mounting, the lifespan, and V2 errors from `predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.routing import Mount

from modelserve import ModelServe, ServerConfig, testing
from modelserve.errors import ModelServeError

EXAMPLES = Path(__file__).parent.parent / "examples"
APPLICANT = [3, 60, 2, 3, 10144, 1, 3, 2, 1, 0, 4, 0, 21, 2, 1, 1, 2, 1, 1, 0]


def modelserve() -> ModelServe:
    return ModelServe(ServerConfig(repository=EXAMPLES / "models", state_dir=None))


def fastapi_app(ms: ModelServe, *, with_lifespan: bool) -> FastAPI:
    """The pattern docs/deploy.md shows: the outer app runs modelserve's lifespan, one line maps errors."""
    app = FastAPI(lifespan=ms.lifespan) if with_lifespan else FastAPI()
    app.add_exception_handler(ModelServeError, ms.error_response)

    @app.post("/score")
    async def score(request: Request, body: dict[str, Any]) -> dict[str, Any]:
        applicant = np.asarray([body["applicant"]], dtype=np.float32)
        outputs = await ms.predict(request, "credit", {"input": applicant})
        version = ms.decision(request, "credit").version
        return {"bad_risk": float(outputs["probabilities"][0, 1]), "version": version}

    app.mount("/ml", ms.app())
    return app


def test_fastapi_with_modelserves_lifespan_serves_its_routes_and_the_mounted_v2_api() -> None:
    ms = modelserve()
    app = fastapi_app(ms, with_lifespan=True)
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        scored = client.post("/score", json={"applicant": APPLICANT})
        assert scored.status_code == 200 and scored.json()["version"] == "1"
        infer = client.post("/ml/v2/models/credit/infer", content=(EXAMPLES / "req.json").read_bytes())
        assert infer.status_code == 200 and infer.headers["x-model-version"] == "1"
        assert client.get("/ml/v2/health/ready").json() == {"ready": True}

        bad = client.post("/score", json={"applicant": APPLICANT[:5]})  # a user's mistake
        assert bad.status_code == 400
        assert bad.headers["content-type"] == "application/json"
        assert "input" in bad.json()["error"]
        unknown = client.post("/ml/v2/models/nope/infer", content=b"{}")
        assert unknown.status_code == 404 and "error" in unknown.json()


@pytest.mark.parametrize("framework", ["fastapi", "starlette"])
def test_a_mount_without_the_lifespan_says_how_to_fix_it(framework: str) -> None:
    ms = modelserve()
    app = (
        fastapi_app(ms, with_lifespan=False)
        if framework == "fastapi"
        else Starlette(routes=[Mount("/ml", ms.app())])
    )
    with testing.serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        infer = client.post("/ml/v2/models/credit/infer", content=(EXAMPLES / "req.json").read_bytes())
        assert infer.status_code == 503
        message = infer.json()["error"]
        assert "lifespan did not run" in message and "lifespan=ms.lifespan" in message
        if framework == "fastapi":
            scored = client.post("/score", json={"applicant": APPLICANT})
            assert scored.status_code == 503 and "lifespan=ms.lifespan" in scored.json()["error"]
