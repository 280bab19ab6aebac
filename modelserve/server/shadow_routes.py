"""Admin routes for shadow runs (the `ShadowService` does the work).

POST /admin/models/{model}/shadow          {"versions": ["2"], "rate": 1.0} | {"off": true}
GET  /admin/models/{model}/shadow/report   stats per shadow version + promotion recommendation
     query: min_samples, min_agreement, max_latency_ratio, max_error_ratio
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

import modelserve.validation as validation
from modelserve.errors import RequestError
from modelserve.server.admin import admin_endpoint, model_status
from modelserve.server.services import Services
from modelserve.shadow.service import ShadowService

#: Thresholds `recommend` accepts from the report's query string, with their (lowest, highest).
THRESHOLDS: dict[str, tuple[float, float]] = {
    "min_samples": (1, 1e12),
    "min_agreement": (0.0, 1.0),
    "max_latency_ratio": (0.0, 1e6),
    "max_error_ratio": (0.0, 1e6),
}


def routes(services: Services, shadow: ShadowService) -> list[BaseRoute]:
    async def configure(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        if body.get("off") is True:
            await shadow.set_shadow(model, ())
        else:
            if "versions" not in body and "version" not in body:
                raise RequestError('send {"versions": ["2"], "rate": 1.0} or {"off": true}')
            raw = body.get("versions", body.get("version"))
            listed = [raw] if isinstance(raw, str | int) and not isinstance(raw, bool) else raw
            if not isinstance(listed, list) or not listed:
                raise RequestError("versions must be a non-empty list of version names")
            await shadow.set_shadow(model, tuple(str(v) for v in listed), body.get("rate"))
        return model_status(services, model)

    async def report(request: Request, body: dict[str, Any]) -> Any:
        return shadow.report(request.path_params["model"], **thresholds(request))

    return [
        Route("/admin/models/{model}/shadow", admin_endpoint(services, configure), methods=["POST"]),
        Route("/admin/models/{model}/shadow/report", admin_endpoint(services, report), methods=["GET"]),
    ]


def thresholds(request: Request) -> dict[str, Any]:
    """The report thresholds named in the query string."""
    chosen: dict[str, Any] = {}
    for name, (low, high) in THRESHOLDS.items():
        raw = request.query_params.get(name)
        if raw is not None:
            try:
                number = float(raw)
            except ValueError:
                raise RequestError(f"{name} must be a number, not {raw[:40]!r}") from None
            integer = name == "min_samples"
            value = validation.number(number, name, low=low, high=high, integer=integer)  # NaN, inf: 400
            chosen[name] = int(value) if integer else value
    return chosen
