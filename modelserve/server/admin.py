"""The admin JSON API's shared parts: the token-guarded endpoint wrapper and a model's status.

Every admin route (`/admin/...`, bearer token; disabled when no token is configured) is an
`admin_endpoint(services, handler)`: the handler gets the request and its decoded JSON object body
and returns JSON-ready data; errors become V2 JSON errors with their HTTP status.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelserve.errors import AuthError, ModelServeError, RequestError, http_status
from modelserve.server import protocol

if TYPE_CHECKING:
    from modelserve.server.services import Services

#: An admin handler: `(request, decoded JSON object body) -> JSON-ready answer`.
Handler = Callable[[Request, dict[str, Any]], Awaitable[Any]]
#: A Starlette request/response endpoint.
Endpoint = Callable[[Request], Awaitable[Response]]


def _respond(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


def admin_endpoint(services: Services, handler: Handler) -> Endpoint:
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
                status_code=http_status(exc),
                media_type="application/json",
            )
            if isinstance(exc, AuthError) and exc.status == 401:
                response.headers["www-authenticate"] = "Bearer"
            return response

    return endpoint


def if_match(request: Request) -> int | None:
    """The desired-state revision a strict caller sent in `If-Match` (409 when it is stale), or None."""
    raw = request.headers.get("if-match")
    if raw is None:
        return None
    text = raw.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise RequestError(f"If-Match must be a revision number, got {raw!r}")
    return int(text)


def required(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise RequestError(f"missing field {key!r}")
    return body[key]


def model_status(services: Services, model: str) -> dict[str, Any]:
    slots = services.registry.slots(model)
    status: dict[str, Any] = slots.describe()
    status["policy"] = services.policies.describe(model)
    status["metrics"] = version_metrics(services, model)
    for provider in services.hooks.status_providers:
        status.update(provider(model))
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
