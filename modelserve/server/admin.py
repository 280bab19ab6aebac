"""Admin JSON API under /admin (bearer token; disabled when no token is configured)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelserve.errors import AuthError, ModelServeError, RequestError
from modelserve.server import protocol

if TYPE_CHECKING:
    from modelserve.server.app import Services

Handler = Callable[[Request, dict[str, Any]], Awaitable[Any]]


def _respond(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def admin_endpoint(services: Services, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate, decode an optional JSON object body, map errors to V2 JSON errors."""

    async def endpoint(request: Request) -> Response:
        try:
            services.check_admin(request.headers.get("authorization"))
            raw = await request.body()
            body: dict[str, Any] = {}
            if raw.strip():
                try:
                    decoded = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise RequestError(f"malformed JSON: {exc}") from None
                if not isinstance(decoded, dict):
                    raise RequestError("the request body must be a JSON object")
                body = decoded
            return _respond(await handler(request, body))
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelServeError) else "internal error"
            response = Response(
                protocol.error_body(message),
                status_code=protocol.status_for(exc),
                media_type="application/json",
            )
            if isinstance(exc, AuthError) and exc.status == 401:
                response.headers["www-authenticate"] = "Bearer"
            return response

    return endpoint


def required(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise RequestError(f"missing field {key!r}")
    return body[key]


def model_status(services: Services, model: str) -> dict[str, Any]:
    slots = services.registry.slots(model)
    status: dict[str, Any] = slots.describe()
    status["policy"] = services.policies.describe(model)
    status["metrics"] = version_metrics(services, model)
    for extend in services.status_extensions:
        status.update(extend(model))
    return status


STATUS_WINDOW_S = 60.0


def version_metrics(services: Services, model: str) -> list[dict[str, Any]]:
    """Per version and role: the last minute (requests, error rate, p50/p95/p99 of the model run)."""
    rows = []
    for name, version, role in sorted(services.windows.keys()):
        if name != model:
            continue
        window = services.windows.snapshot(model, version, role, STATUS_WINDOW_S)
        totals = services.windows.totals(model, version, role)
        rows.append(
            {
                "version": version,
                "role": role,
                "window_s": window.window_s,
                "requests": window.requests,
                "error_rate": window.error_rate,
                "timeout_rate": window.timeout_rate,
                "p50_ms": None if window.p50 is None else window.p50 * 1e3,
                "p95_ms": None if window.p95 is None else window.p95 * 1e3,
                "p99_ms": None if window.p99 is None else window.p99 * 1e3,
                "total_requests": totals.requests,
                "total_errors": totals.errors,
            }
        )
    return rows


def routes(services: Services) -> list[Route]:
    registry = services.registry

    async def list_models(request: Request, body: dict[str, Any]) -> Any:
        return {
            "models": [model_status(services, name) for name in sorted(registry.models)],
            "load_errors": services.load_errors,
        }

    async def status(request: Request, body: dict[str, Any]) -> Any:
        return model_status(services, request.path_params["model"])

    async def stage(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        loaded = await registry.stage(model, str(required(body, "version")))
        return {"model": model, "staged": loaded.describe(), "status": model_status(services, model)}

    async def promote(request: Request, body: dict[str, Any]) -> Any:
        switch = await registry.promote(request.path_params["model"])
        return {"switch": _switch(switch), "status": model_status(services, switch.model)}

    async def rollback(request: Request, body: dict[str, Any]) -> Any:
        switch = await registry.rollback(request.path_params["model"])
        return {"switch": _switch(switch), "status": model_status(services, switch.model)}

    async def unload(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        version = body.get("version")
        await registry.unload(model, None if version is None else str(version))
        return {"model": model, "unloaded": version or "all"}

    def post(path: str, handler: Handler) -> Route:
        return Route(path, admin_endpoint(services, handler), methods=["POST"])

    def get(path: str, handler: Handler) -> Route:
        return Route(path, admin_endpoint(services, handler), methods=["GET"])

    return [
        get("/admin/models", list_models),
        get("/admin/models/{model}", status),
        post("/admin/models/{model}/stage", stage),
        post("/admin/models/{model}/promote", promote),
        post("/admin/models/{model}/rollback", rollback),
        post("/admin/models/{model}/unload", unload),
    ]


def _switch(switch: Any) -> dict[str, Any]:
    return {
        "model": switch.model,
        "action": switch.action,
        "from_version": switch.from_version,
        "to_version": switch.to_version,
        "live_slot": switch.live_slot,
    }
