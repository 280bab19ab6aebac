"""Admin routes for rollouts (the `RolloutService` does the work).

    POST /admin/models/{model}/rollout            {"version": "2", "plan": "default", "time_scale": 0.1}
    GET  /admin/models/{model}/rollout            status, events (the timeline) and webhook counters
    POST /admin/models/{model}/rollout/pause      {"reason": "..."}   keeps evaluating; still rolls back
    POST /admin/models/{model}/rollout/resume
    POST /admin/models/{model}/rollout/abort      {"reason": "..."}   candidate gets no traffic any more
    POST /admin/models/{model}/rollout/promote    {"all": false}      skip the stage (all: every stage)

`plan` is `"default"` (the default) or a plan object in the TOML plan format (`rollout/plan.py`); the
CLI reads plan files and sends them as objects.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

import modelserve.validation as validation
from modelserve.errors import ConfigError, RequestError
from modelserve.rollout.plan import RolloutPlan, default_plan, plan_from_dict
from modelserve.rollout.service import RolloutService
from modelserve.server.admin import Handler, admin_endpoint, required
from modelserve.server.services import Services

ACTIONS = ("pause", "resume", "abort", "promote")


def routes(services: Services, rollout: RolloutService) -> list[BaseRoute]:
    controller = rollout.controller

    async def start(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        version = required(body, "version")
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise RequestError("version must be a version name")
        plan = plan_from_body(body)
        # Any replica takes commands; the leader runs the rollout (see RolloutService.act).
        await rollout.act(model, lambda: rollout.start(model, str(version), plan))
        return await rollout.current(model)

    async def show(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        services.registry.slots(model)  # 404 for an unknown model
        return await rollout.current(model)

    def command(action: str) -> Handler:
        async def handler(request: Request, body: dict[str, Any]) -> Any:
            model = request.path_params["model"]
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise RequestError("reason must be a string")
            if action == "pause":
                await rollout.act(model, lambda: controller.pause(model, reason or "paused by operator"))
            elif action == "resume":
                await rollout.act(model, lambda: controller.resume(model))
            elif action == "abort":
                await rollout.act(model, lambda: controller.abort(model, reason or "aborted by operator"))
            else:
                # a typed boolean: the string "false" must never mean "skip every stage"
                every = validation.flag(body.get("all", False), "all")
                await rollout.act(model, lambda: controller.promote(model, all_stages=every))
            return await rollout.current(model)

        return handler

    base = "/admin/models/{model}/rollout"
    return [
        Route(base, admin_endpoint(services, start), methods=["POST"]),
        Route(base, admin_endpoint(services, show), methods=["GET"]),
        *[
            Route(f"{base}/{action}", admin_endpoint(services, command(action)), methods=["POST"])
            for action in ACTIONS
        ],
    ]


def plan_from_body(body: dict[str, Any]) -> RolloutPlan:
    """The plan a start request asks for: `plan` ("default" or an object), scaled by `time_scale`."""
    raw = body.get("plan", "default")
    try:
        if raw == "default":
            plan = default_plan()
        elif isinstance(raw, dict):
            plan = plan_from_dict(raw, default_name="custom", where="plan")
        else:
            raise RequestError('plan must be "default" or a plan object (the CLI reads plan files)')
        scale = body.get("time_scale")
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise RequestError("time_scale must be a number > 0")
            plan = plan.scaled(float(scale))
    except ConfigError as exc:
        raise RequestError(str(exc)) from None
    return plan
