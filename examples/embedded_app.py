"""An existing Starlette app that mounts modelserve and calls it from its own handler.

    python examples/embedded_app.py              # serves on 127.0.0.1:8080
    curl -H 'x-user-id: alice' localhost:8080/loans/score \
        -d '{"applicant": [3, 60, 2, 3, 10144, 1, 3, 2, 1, 0, 4, 0, 21, 2, 1, 1, 2, 1, 1, 0]}'

The app keeps its own routes (`/loans/score`, `/healthz`); modelserve adds its middleware (routing,
flags, canary, shadow, telemetry), its lifespan (models loaded warm) and, optionally, its V2 and
admin routes (mounted here too, so `modelserve stage/promote/canary` work against this app).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelserve import ModelServe, ServerConfig
from modelserve.errors import ModelServeError
from modelserve.server.protocol import status_for

MODEL = "credit"


def build_app(
    repository: Path, *, state_dir: Path | None = None, admin_token: str | None = None
) -> Starlette:
    ms = ModelServe(ServerConfig(repository=repository, state_dir=state_dir, admin_token=admin_token))

    async def score(request: Request) -> JSONResponse:
        body = await request.json()
        applicant = np.asarray([body["applicant"]], dtype=np.float32)
        try:
            outputs = await ms.predict(request, MODEL, {"input": applicant})
        except ModelServeError as exc:
            return JSONResponse({"error": str(exc)}, status_code=status_for(exc))
        decision = ms.decision(request, MODEL)
        risk = float(outputs["probabilities"][0, 1])
        return JSONResponse(
            {"bad_risk_probability": risk, "approve": risk < 0.5},
            headers={"x-model-version": decision.version, "x-route-reason": decision.reason},
        )

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    routes = [Route("/loans/score", score, methods=["POST"]), Route("/healthz", healthz), *ms.routes]
    return Starlette(routes=routes, middleware=ms.middleware, lifespan=ms.lifespan)


if __name__ == "__main__":
    import uvicorn

    here = Path(__file__).parent
    app = build_app(
        here / "models",
        state_dir=Path(".modelserve-embedded"),
        admin_token=os.environ.get("MODELSERVE_ADMIN_TOKEN"),
    )
    uvicorn.run(app, host="127.0.0.1", port=8080)
