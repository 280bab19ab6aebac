"""The routing feature: flags (hot-reloaded), route decisions per request, canary and policy admin.

Admin API (bearer token):
    POST /admin/models/{model}/canary   {"percent": 5, "candidate": "2"}   sticky split to the candidate
    POST /admin/models/{model}/policy   {"flag": "...", "allow_version_override": true, ...}
    GET  /admin/flags                   the flags file, its last reload error, reload count
"""

from __future__ import annotations

from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.routing import Route

from modelserve.errors import RequestError
from modelserve.middleware.routing import Router, RoutingMiddleware
from modelserve.server.admin import admin_endpoint, model_status, required
from modelserve.server.app import Feature, Services
from modelserve.state.flags import FlagFileSource

FLAG_POLL_INTERVAL_S = 1.0


def install(services: Services) -> Feature:
    flags = FlagFileSource(services.config.flags_file) if services.config.flags_file is not None else None
    router = Router(registry=services.registry, policies=services.policies, flags=flags)
    services.router = router

    async def canary(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        services.registry.slots(model)
        percent = required(body, "percent")
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise RequestError("percent must be a number within 0..100")
        changes: dict[str, Any] = {"canary_weight": float(percent)}
        candidate = body.get("candidate")
        if candidate is None:
            policy = services.policies.get(model)
            slots = services.registry.slots(model)
            staged = slots.idle.version if slots.idle is not None and slots.idle_role == "candidate" else None
            candidate = (policy.candidate if policy else None) or staged
        if percent > 0:
            if candidate is None:
                raise RequestError(f"model {model!r} has no candidate: stage a version or name one")
            if str(candidate) not in services.registry.slots(model).ready_versions:
                raise RequestError(f"candidate {candidate} of model {model!r} is not loaded and ready")
        if candidate is not None:
            changes["candidate"] = str(candidate)
        services.policies.update(model, **changes)
        return model_status(services, model)

    async def policy(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        services.registry.slots(model)
        services.policies.update(model, **body)
        return model_status(services, model)

    async def flags_status(request: Request, body: dict[str, Any]) -> Any:
        if flags is None:
            return {"file": None}
        return {
            "file": str(flags.path),
            "flags": sorted(flags.flagset.flags) if hasattr(flags.flagset, "flags") else None,
            "last_error": flags.last_error,
            "reloads": flags.reloads,
            "cache": {"hits": router.cache.hits, "misses": router.cache.misses},
        }

    def status(model: str) -> dict[str, Any]:
        return {"routing_errors": router.errors, "flags_error": flags.last_error if flags else None}

    return Feature(
        name="routing",
        routes=[
            Route("/admin/models/{model}/canary", admin_endpoint(services, canary), methods=["POST"]),
            Route("/admin/models/{model}/policy", admin_endpoint(services, policy), methods=["POST"]),
            Route("/admin/flags", admin_endpoint(services, flags_status), methods=["GET"]),
        ],
        middleware=[Middleware(RoutingMiddleware, router=router)],
        status=status,
        tasks=[lambda: flags.watch(FLAG_POLL_INTERVAL_S)] if flags is not None else [],
    )
