"""The admin JSON API's shared parts: the token-guarded endpoint wrapper and a model's status.

Every admin route (`/admin/...`, bearer token; disabled when no token is configured) is an
`admin_endpoint(services, handler)`: the handler gets the request and its decoded JSON object body
and returns JSON-ready data; errors become V2 JSON errors with their HTTP status.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from modelserve.errors import AuthError, ModelServeError, NotReady, RequestError, http_status
from modelserve.server import protocol
from modelserve.server.auth import ADMIN, READ
from modelserve.server.http import read_body
from modelserve.state.audit import Actor
from modelserve.state.coordinator import CoordinatorUnavailable

if TYPE_CHECKING:
    from modelserve.server.services import Services

log = logging.getLogger("modelserve.server")

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


#: Admin bodies are small JSON documents (the largest: a batch of outcomes); more is refused (413).
ADMIN_BODY_BYTES = 8 * 1024 * 1024
#: A client's reason for a change, recorded in the audit log (or `"reason"` in the JSON body).
REASON_HEADER = "x-modelserve-reason"
#: Scope key where a handler leaves a note for its audit entry (e.g. what a forced change overrode).
AUDIT_DETAIL = "modelserve.audit_detail"


def admin_endpoint(services: Services, handler: Handler, *, scope: str | None = None) -> Endpoint:
    """Authenticate, decode an optional JSON object body, map errors to V2 JSON errors.

    `scope` is the token scope the route needs (`server/auth.py`): by default `read` for GET and
    `admin` otherwise. Every successful admin call is recorded in the audit log with the model's
    state before and after, the token scope that made it and the reason the client gave.
    """

    async def endpoint(request: Request) -> Response:
        try:
            needed = scope or (READ if request.method in ("GET", "HEAD") else ADMIN)
            granted = services.authorize(request.headers.get("authorization"), needed)
            limit = min(ADMIN_BODY_BYTES, services.config.max_json_bytes)  # parsing JSON holds the GIL
            raw = await read_body(request.receive, request.scope["headers"], limit)
            body: dict[str, Any] = {}
            if raw.strip():
                try:
                    decoded = orjson.loads(raw)
                except orjson.JSONDecodeError as exc:
                    raise RequestError(f"malformed JSON: {exc}") from None
                if not isinstance(decoded, dict):
                    raise RequestError("the request body must be a JSON object")
                body = decoded
            if needed != ADMIN:
                return _respond(await handler(request, body))
            model = request.path_params.get("model")
            before = audit_snapshot(services, model)
            answer = await handler(request, body)
            services.audit.record(
                model or "*",
                action_of(request),
                actor=Actor(scope=granted, reason=reason_of(request, body)),
                before=before,
                after=audit_snapshot(services, model),
                detail=request.scope.get(AUDIT_DETAIL, ""),
            )
            return _respond(answer)
        except Exception as exc:
            message = str(exc) if isinstance(exc, ModelServeError) else "internal error"
            status = http_status(exc)
            if status >= 500 and not isinstance(exc, NotReady):  # a bug or a failure: never silent
                log.error(
                    "admin %s %s failed: %s", request.method, request.url.path, exc,
                    exc_info=not isinstance(exc, ModelServeError),
                )  # fmt: skip
            error = protocol.error_body(message)
            response = Response(error, status_code=status, media_type="application/json")
            if isinstance(exc, AuthError) and exc.status == 401:
                response.headers["www-authenticate"] = "Bearer"
            if isinstance(exc, CoordinatorUnavailable):  # the shared state is away: try again soon
                response.headers["retry-after"] = str(exc.retry_after_s)
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


def action_of(request: Request) -> str:
    """The audit action of an admin call: its path below the model (`promote`, `rollout/abort`, ...)."""
    path = request.url.path
    model = request.path_params.get("model")
    marker = f"/models/{model}/" if model else "/admin/"
    _, found, rest = path.partition(marker)
    return (rest if found else path).strip("/") or "change"


def reason_of(request: Request, body: dict[str, Any]) -> str:
    """The client's reason: the `X-Modelserve-Reason` header, else a string `reason` in the body."""
    reason = request.headers.get(REASON_HEADER) or body.get("reason")
    return reason[:500] if isinstance(reason, str) else ""


def audit_snapshot(services: Services, model: str | None) -> dict[str, Any]:
    """What an audit entry keeps of a model's state: versions, split, shadow, flag, rollout."""
    if model is None:
        return {}
    slots = services.registry.models.get(model)
    if slots is None:
        return {"loaded": False}
    policy = services.policies.describe(model)
    snapshot: dict[str, Any] = {
        "live": slots.live.version if slots.live is not None else None,
        "ready_versions": sorted(slots.ready_versions, key=int),
    }
    for key in ("candidate", "canary_weight", "shadow_versions", "shadow_sample_rate", "flag"):
        if key in policy:
            snapshot[key] = policy[key]
    rollout = services.rollout.status(model) if services.rollout is not None else None
    if rollout is not None:
        snapshot["rollout"] = f"{rollout.candidate}: {rollout.state}, stage {rollout.stage}"
    return snapshot


def required(body: dict[str, Any], key: str) -> Any:
    if key not in body:
        raise RequestError(f"missing field {key!r}")
    return body[key]


def state_errors(services: Services, model: str) -> list[str]:
    """Why parts of `model`'s saved state were not applied (each names its file); [] when all were."""
    errors = []
    prepared = services.replica.sync.prepare_errors.get(model)
    if prepared:
        errors.append(prepared)
    problem = services.policies.problems.get(model)
    if problem:
        errors.append(problem)
    if services.rollout is not None:
        restore = services.rollout.controller.restore_errors.get(model)
        if restore:
            errors.append(restore)
    return errors


def model_status(services: Services, model: str) -> dict[str, Any]:
    slots = services.registry.slots(model)
    status: dict[str, Any] = slots.describe()
    broken = state_errors(services, model)
    if broken:
        status["state_errors"] = broken
    status["policy"] = services.policies.describe(model)
    status["metrics"] = version_metrics(services, model)
    for provider in services.hooks.status_providers:
        status.update(provider(model))
    return status


STATUS_WINDOW_S = 60.0


def version_metrics(services: Services, model: str) -> list[dict[str, Any]]:
    """Per version and role: the last minute (requests, error rate, p50/p95/p99 of the model run, in s)."""
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
                "p50_s": window.p50,
                "p95_s": window.p95,
                "p99_s": window.p99,
                "total_requests": totals.requests,
                "total_errors": totals.errors,
            }
        )
    return rows
