"""The status page (`/ui`), its JSON, and posting true labels (the `MonitoringService` does the work).

    GET  /ui                              the status page: static HTML/JS shipped in the package
                                          (`server/ui/`, uPlot vendored), no build step, no CDN
    GET  /ui/static/{file}                its files
    GET  /ui/api/models                   `{"service": ..., "models": [...]}`
    GET  /ui/api/models/{model}           everything the page draws for one model (see `model_snapshot`)
    POST /v2/models/{model}/labels        `{"request_id": "...", "label": 1}` (or `"value": 3.2`),
                                          or `{"labels": [...]}`: true labels joined to what each
                                          version predicted for that request (feedback scope;
                                          in a fleet on any replica, once)

The page and its JSON are read-only and open, unless a read token is configured (`--read-token`):
then the JSON needs the read (or admin) token. The page asks for it in a sign-in form, keeps it in
the tab's sessionStorage and sends it as an Authorization header, never in a URL (a `?token=` is
stripped from the address bar and not used). The page's files carry a content security policy
(scripts only from the page's own files) and no-referrer. Labels move accuracy figures and gates,
so they take the feedback (or admin) token, like outcomes. The page polls its JSON every two seconds.
"""

from __future__ import annotations

import time
from importlib import resources
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from modelserve.errors import ModelServeError, NotFound, RequestError, http_status
from modelserve.monitoring.service import MAX_LABEL_BATCH, MonitoringService
from modelserve.server import protocol
from modelserve.server.admin import admin_endpoint, model_status
from modelserve.server.auth import FEEDBACK, READ
from modelserve.server.services import Services

UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
SERVICE_NAME = "modelserve"
#: Headers of the page and its files: own scripts only (what would read the token is the page's
#: code alone), no framing, no Referer to other sites.
PAGE_HEADERS = {
    "cache-control": "no-cache",
    "content-security-policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
}


def _ui_file(name: str) -> bytes:
    return resources.files("modelserve.server").joinpath("ui", name).read_bytes()


def _json(data: Any, status: int = 200) -> Response:
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return Response(
        body, status_code=status, media_type="application/json", headers={"cache-control": "no-store"}
    )


def _error(exc: BaseException) -> Response:
    message = str(exc) if isinstance(exc, ModelServeError) else "internal error"
    return Response(protocol.error_body(message), status_code=http_status(exc), media_type="application/json")


def traffic_split(status: dict[str, Any]) -> dict[str, Any]:
    """Declared split (live / candidate weights from the policy) and observed primary shares (last minute)."""
    policy = status.get("policy") or {}
    live = status.get("live_version")
    candidate = policy.get("candidate")
    weight = float(policy.get("canary_weight") or 0.0) if candidate and candidate != live else 0.0
    declared: dict[str, float] = {}
    if live is not None:
        declared[str(live)] = 100.0 - weight
    if weight:
        declared[str(candidate)] = weight
    rows = [row for row in status.get("metrics", []) if row.get("role") == "primary"]
    total = sum(row["requests"] for row in rows)
    observed = {row["version"]: 100.0 * row["requests"] / total for row in rows if total}
    return {"declared": declared, "observed": observed, "shadow": list(policy.get("shadow_versions") or [])}


def model_snapshot(services: Services, monitoring: MonitoringService, model: str) -> dict[str, Any]:
    """What the page shows for `model`: status, split, rollout timeline, shadow, experiment, monitoring."""
    status = model_status(services, model)
    snapshot: dict[str, Any] = {
        "model": model,
        "generated_at": time.time(),
        "status": status,
        "split": traffic_split(status),
        "rollout": services.rollout.describe(model) if services.rollout is not None else None,
        "shadow": services.shadow.report(model) if services.shadow is not None else None,
        "experiment": None,
        "monitoring": {
            "versions": monitoring.versions(model),
            "output_shift": monitoring.output_shift(model),
            "disagreements": monitoring.disagreements(model),
            "history": monitoring.history.series(model),
            "history_interval_s": monitoring.history_interval_s,
            "reference_error": monitoring.reference_errors.get(model),
            "sampling": monitoring.monitor.sampling(model),
            # In a fleet, every replica's figures merged (`monitoring/fleet.py`); None in one process.
            "fleet": monitoring.fleet_view(model),
        },
    }
    if services.experiments is not None:
        try:
            document = services.experiments.report_document(model)
            snapshot["experiment"] = {"experiment": document["experiment"], "report": document["report"]}
        except NotFound:
            pass
    return snapshot


def routes(services: Services, monitoring: MonitoringService) -> list[BaseRoute]:
    files = {name: (_ui_file(name), kind) for name, kind in UI_FILES.items()}

    async def page(request: Request) -> Response:
        if request.url.path.endswith("/ui"):
            return RedirectResponse(request.url.path + "/", status_code=307)
        body, kind = files["index.html"]
        return Response(body, media_type=kind, headers=PAGE_HEADERS)

    async def static(request: Request) -> Response:
        found = files.get(request.path_params["name"])
        if found is None:
            return _error(NotFound(f"no file {request.path_params['name']!r} in the status page"))
        return Response(found[0], media_type=found[1], headers=PAGE_HEADERS)

    def check_read(request: Request) -> None:
        if services.config.read_token:
            services.authorize(request.headers.get("authorization"), READ)

    async def models(request: Request) -> Response:
        try:
            check_read(request)
        except Exception as exc:
            return _error(exc)
        names = sorted(set(services.registry.models) | set(services.expected_models()))
        return _json({"service": SERVICE_NAME, "models": names, "load_errors": services.load_errors})

    async def one_model(request: Request) -> Response:
        try:
            check_read(request)
            await monitoring.flush()  # the batch work off the event loop; the reads below find little left
            return _json(model_snapshot(services, monitoring, request.path_params["model"]))
        except Exception as exc:
            return _error(exc)

    async def labels(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        services.registry.slots(model)  # 404 for an unknown model
        if "labels" in body:
            items = body["labels"]
            if (
                set(body) != {"labels"}
                or not isinstance(items, list)
                or not 0 < len(items) <= MAX_LABEL_BATCH
            ):
                raise RequestError(f'a batch is {{"labels": [...]}} with 1..{MAX_LABEL_BATCH} labels')
        else:
            items = [body]
        return await monitoring.submit_labels(model, items)

    return [
        Route("/ui", page, methods=["GET"]),
        Route("/ui/", page, methods=["GET"]),
        Route("/ui/static/{name}", static, methods=["GET"]),
        Route("/ui/api/models", models, methods=["GET"]),
        Route("/ui/api/models/{model}", one_model, methods=["GET"]),
        Route(
            "/v2/models/{model}/labels", admin_endpoint(services, labels, scope=FEEDBACK), methods=["POST"]
        ),
    ]
