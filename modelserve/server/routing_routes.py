"""Admin routes for routing: canary split, policy changes, and the flags file's state.

POST /admin/models/{model}/canary   {"percent": 5, "candidate": "2"}   sticky split to the candidate
POST /admin/models/{model}/policy   {"flag": "...", "allow_version_override": true, ...}
GET  /admin/flags                   the flags file, its last reload error, reload count
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

import modelserve.validation as validation
from modelserve.errors import RequestError
from modelserve.server.admin import admin_endpoint, if_match, model_status, required
from modelserve.server.services import Services
from modelserve.serving.repository import check_version


def routes(services: Services) -> list[BaseRoute]:
    registry, policies, flags, router = services.registry, services.policies, services.flags, services.router
    commands = services.replica.commands  # changes go to the shared desired state, applied everywhere

    async def canary(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        slots = registry.slots(model)
        percent = validation.number(required(body, "percent"), "percent", low=0.0, high=100.0)
        changes: dict[str, Any] = {"canary_weight": percent}
        candidate = body.get("candidate")
        if candidate is not None:  # even at 0 %: a saved candidate must be a version
            check_version(validation.text(str(candidate), "candidate", max_length=40))
        if candidate is None:
            policy = policies.get(model)
            staged = slots.idle.version if slots.idle is not None and slots.idle_role == "candidate" else None
            candidate = (policy.candidate if policy else None) or staged
        if percent > 0:
            if candidate is None:
                raise RequestError(f"model {model!r} has no candidate: stage a version or name one")
            if str(candidate) not in registry.slots(model).ready_versions:
                raise RequestError(f"candidate {candidate} of model {model!r} is not loaded and ready")
        if candidate is not None:
            changes["candidate"] = str(candidate)
        policies.check(model, **changes)
        desired = await commands.update_policy(model, changes, expect_rev=if_match(request))
        return {**model_status(services, model), "revision": desired.rev}

    async def policy(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        slots = registry.slots(model)
        shadows = body.get("shadow_versions")
        live = slots.live.version if slots.live is not None else None
        if isinstance(shadows, list) and live is not None and live in [str(v) for v in shadows]:
            raise RequestError(f"version {live} is the live version of {model!r}; shadow another one")
        if "request_timeout_s" in body:  # owned by rollouts: a restore clears one no rollout owns
            raise RequestError(
                "request_timeout_s is set by a running rollout's plan and cleared when it ends; a model's "
                "own request deadline is [serving] request_timeout_ms in its config.toml"
            )
        policies.check(model, **body)  # typed, finite, bounded: refused before any replica sees it
        desired = await commands.update_policy(model, body, expect_rev=if_match(request))
        return {**model_status(services, model), "revision": desired.rev}

    async def flags_status(request: Request, body: dict[str, Any]) -> Any:
        if flags is None:
            return {"file": None}
        return {
            "file": str(flags.path),
            "flags": sorted(flags.flagset.flags),
            "last_error": flags.last_error,
            "reloads": flags.reloads,
            "cache": {"hits": router.cache.hits, "misses": router.cache.misses},
        }

    return [
        Route("/admin/models/{model}/canary", admin_endpoint(services, canary), methods=["POST"]),
        Route("/admin/models/{model}/policy", admin_endpoint(services, policy), methods=["POST"]),
        Route("/admin/flags", admin_endpoint(services, flags_status), methods=["GET"]),
    ]
