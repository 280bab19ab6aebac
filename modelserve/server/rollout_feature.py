"""The rollout feature: the rollout controller over the real server's slots, policies and windows.

Admin API (bearer token):
    POST /admin/models/{model}/rollout            {"version": "2", "plan": "default", "time_scale": 0.1}
    GET  /admin/models/{model}/rollout            status, events (the timeline) and webhook counters
    POST /admin/models/{model}/rollout/pause      {"reason": "..."}   keeps evaluating; still rolls back
    POST /admin/models/{model}/rollout/resume
    POST /admin/models/{model}/rollout/abort      {"reason": "..."}   candidate gets no traffic any more
    POST /admin/models/{model}/rollout/promote    {"all": false}      skip the stage (all: every stage)

Starting stages the version into the idle slot when it is not there as the candidate. `plan` is
`"default"` (the default) or a plan object in the TOML plan format (`rollout/plan.py`); the CLI
reads plan files and sends them as objects. The controller evaluates in a lifespan task; after a
restart, rollouts saved in the state store are restored once the models have loaded.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.routing import BaseRoute, Route

from modelserve.errors import ConfigError, Conflict, RequestError
from modelserve.rollout.controller import RolloutController
from modelserve.rollout.events import RolloutEvent, RolloutStatus
from modelserve.rollout.gates import ShadowAgreement
from modelserve.rollout.plan import RolloutPlan, default_plan, plan_from_dict
from modelserve.rollout.webhooks import WebhookNotifier
from modelserve.server.admin import admin_endpoint, required
from modelserve.server.app import Feature, Services

log = logging.getLogger("modelserve.rollout")


class ServingTarget:
    """`RolloutTarget` over the app: routing policies for traffic and shadow, registry slots for the rest."""

    def __init__(self, services: Services) -> None:
        self.services = services

    async def live_version(self, model: str) -> str | None:
        slots = self.services.registry.models.get(model)
        return slots.live.version if slots is not None and slots.live is not None else None

    async def is_ready(self, model: str, version: str) -> bool:
        slots = self.services.registry.models.get(model)
        return slots is not None and version in slots.ready_versions

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        self.services.policies.update(model, candidate=candidate, canary_weight=float(weight))

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        policy = self.services.policies.get(model)
        current = policy.shadow_versions if policy is not None else ()
        if on and candidate not in current:
            self._forget_shadow_stats(model, candidate)  # agreement counts from this switch-on
        versions = [v for v in current if v != candidate] + ([candidate] if on else [])
        self.services.policies.update(model, shadow_versions=versions)

    async def promote(self, model: str, version: str) -> None:
        registry = self.services.registry
        slots = registry.slots(model)
        if slots.live is not None and slots.live.version == version:
            return  # already live (a retry after a partly failed promote)
        idle = slots.idle
        if idle is None or idle.version != version or slots.idle_role != "candidate":
            await registry.stage(model, version)
        await registry.promote(model)
        # Clear the split only now: until the switch, the candidate keeps its 100 %.
        policy = self.services.policies.get(model)
        shadows = [v for v in (policy.shadow_versions if policy else ()) if v != version]
        self.services.policies.update(model, candidate=None, canary_weight=0.0, shadow_versions=shadows)

    def _forget_shadow_stats(self, model: str, version: str) -> None:
        runner = _shadow_runner(self.services)
        forget = getattr(runner, "forget", None)
        if callable(forget):
            forget(model, version)


def _shadow_runner(services: Services) -> Any:
    # The shadow feature may expose its ShadowRunner as `.runner` or be one itself.
    shadow = services.shadow
    return getattr(shadow, "runner", shadow) if shadow is not None else None


def shadow_agreement(services: Services, model: str, version: str) -> ShadowAgreement | None:
    """The candidate's agreement with the primary from the shadow runner's stats, or None without shadow."""
    snapshot = getattr(_shadow_runner(services), "snapshot", None)
    if not callable(snapshot):
        return None
    for entry in snapshot(model):
        if entry.get("shadow_version") == version:
            return ShadowAgreement(rate=entry.get("agreement_rate"), samples=int(entry.get("samples") or 0))
    return ShadowAgreement(rate=None, samples=0)


@dataclass(slots=True, kw_only=True)
class RolloutService:
    """What the rollout feature hangs on `services.rollout`."""

    services: Services
    controller: RolloutController
    webhooks: WebhookNotifier | None

    async def start(self, model: str, version: str, plan: RolloutPlan) -> RolloutStatus:
        """Stage `version` if needed, then start the plan; Conflict when the model has a rollout already."""
        current = self.controller.status(model)
        if current is not None and current.active:
            raise Conflict(
                f"model {model!r} already has a rollout to version {current.candidate!r} "
                f"({current.state}, stage {current.stage!r}); abort it or wait for it to finish"
            )
        if any(stage.shadow for stage in plan.stages) and _shadow_runner(self.services) is None:
            raise Conflict(
                f"plan {plan.name!r} has a shadow stage but this server has no shadow feature; "
                "use a plan without shadow stages"
            )
        registry = self.services.registry
        slots = registry.slots(model)
        live = slots.live.version if slots.live is not None else None
        idle = slots.idle
        staged = idle is not None and idle.version == version and slots.idle_role == "candidate"
        if version != live and not staged:
            await registry.stage(model, version)
        return await self.controller.start(model, version, plan)

    def describe(self, model: str) -> dict[str, Any]:
        """Status, events and webhook counters of the model's rollout (the GET answer)."""
        status = self.controller.status(model)
        stats = self.webhooks.stats() if self.webhooks is not None else None
        return {
            "model": model,
            "rollout": status_dict(status) if status is not None else None,
            "events": [e.to_dict() for e in self.controller.events(model)],
            "webhooks": None if stats is None else dataclasses.asdict(stats),
        }


def status_dict(status: RolloutStatus) -> dict[str, Any]:
    """A RolloutStatus as JSON-ready data."""
    return {
        "model": status.model,
        "candidate": status.candidate,
        "baseline_version": status.baseline_version,
        "plan": status.plan,
        "state": status.state,
        "active": status.active,
        "reason": status.reason,
        "stage": status.stage,
        "stage_index": status.stage_index,
        "stage_count": status.stage_count,
        "weight": status.weight,
        "shadow": status.shadow,
        "stage_elapsed_s": round(status.stage_elapsed_s, 3),
        "gates": [g.to_dict() for g in status.gates],
        "failures": status.failures,
        "passes": status.passes,
    }


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


def install(services: Services) -> Feature:
    webhooks = WebhookNotifier(services.config.webhooks) if services.config.webhooks else None

    def on_event(event: RolloutEvent) -> None:
        record = getattr(services.telemetry, "record_event", None)
        if callable(record):  # a span event; gates keyed by name flatten to `gates.<name>.observed`...
            attributes = event.to_dict()
            attributes["gates"] = {gate.pop("gate"): gate for gate in attributes["gates"]}
            record(f"modelserve.rollout.{event.kind}", attributes)

    controller = RolloutController(
        target=ServingTarget(services),
        windows=services.windows,
        store=services.store,
        agreement=lambda model, version: shadow_agreement(services, model, version),
        webhooks=webhooks,
        on_event=on_event,
    )
    rollout = services.rollout = RolloutService(services=services, controller=controller, webhooks=webhooks)

    async def start(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        version = required(body, "version")
        if isinstance(version, bool) or not isinstance(version, str | int):
            raise RequestError("version must be a version name")
        await rollout.start(model, str(version), plan_from_body(body))
        return rollout.describe(model)

    async def show(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        services.registry.slots(model)  # 404 for an unknown model
        return rollout.describe(model)

    def command(action: str) -> Any:
        async def handler(request: Request, body: dict[str, Any]) -> Any:
            model = request.path_params["model"]
            reason = body.get("reason")
            if reason is not None and not isinstance(reason, str):
                raise RequestError("reason must be a string")
            if action == "pause":
                await controller.pause(model, reason or "paused by operator")
            elif action == "resume":
                await controller.resume(model)
            elif action == "abort":
                await controller.abort(model, reason or "aborted by operator")
            else:
                await controller.promote(model, all_stages=bool(body.get("all", False)))
            return rollout.describe(model)

        return handler

    async def restore() -> None:
        await controller.restore(sorted(services.registry.models))

    def status(model: str) -> dict[str, Any]:
        current = controller.status(model)
        if current is None:
            return {"rollout": None}
        return {
            "rollout": {
                "candidate": current.candidate,
                "state": current.state,
                "stage": current.stage,
                "stage_index": current.stage_index,
                "stage_count": current.stage_count,
                "weight": current.weight,
                "shadow": current.shadow,
                "reason": current.reason,
            }
        }

    base = "/admin/models/{model}/rollout"
    routes: list[BaseRoute] = [
        Route(base, admin_endpoint(services, start), methods=["POST"]),
        Route(base, admin_endpoint(services, show), methods=["GET"]),
        *[
            Route(f"{base}/{action}", admin_endpoint(services, command(action)), methods=["POST"])
            for action in ("pause", "resume", "abort", "promote")
        ],
    ]
    return Feature(
        name="rollout",
        routes=routes,
        status=status,
        startup=[restore],
        tasks=[controller.run, *([webhooks.run] if webhooks is not None else [])],
    )
