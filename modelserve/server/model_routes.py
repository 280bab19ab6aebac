"""Admin routes for a model's warm set: list, status, stage, load, promote, rollback, unload.

GET  /admin/models                       every loaded model's status, load errors, memory budget
GET  /admin/models/{model}               the model's status (warm set, policy, metrics, features)
POST /admin/models/{model}/stage         {"version": "2"}  load + warm as the candidate (0% traffic);
                                         409 when its inputs/outputs differ from live's, unless
                                         {"force": true}
POST /admin/models/{model}/load          {"version": "3"}  add a warm version with no role (pinned),
                                         on every replica
POST /admin/models/{model}/promote       switch live to the candidate; 409 when it was rolled back
                                         for failing its gates, unless {"force": true, "reason": ...};
                                         {"check": {"rows": [...]}}: labelled rows replayed through
                                         live and candidate first (rollout/precheck.py), 409 unless pass
POST /admin/models/{model}/rollback      switch back to the previous version; {"to": "1"}: to any
                                         warm version (instant: nothing loads)
POST /admin/models/{model}/unload        {"version": "1"}: one warm, non-live version, on every replica;
                                         no body: the whole model, on this replica
"""

from __future__ import annotations

import dataclasses
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

import modelserve.validation as validation
from modelserve.errors import Conflict, RequestError
from modelserve.rollout.precheck import CheckResult, parse_rows, replay
from modelserve.server.admin import (
    AUDIT_DETAIL,
    Handler,
    admin_endpoint,
    if_match,
    model_status,
    reason_of,
    required,
)
from modelserve.server.services import Services
from modelserve.serving.compatibility import incompatibilities
from modelserve.serving.slots import Switch


def routes(services: Services) -> list[Route]:
    registry, withdrawn = services.registry, services.withdrawn
    commands = services.replica.commands  # every replica carries these out (shared desired state)

    async def list_models(request: Request, body: dict[str, Any]) -> Any:
        return {
            "models": [model_status(services, name) for name in sorted(registry.models)],
            "load_errors": {**services.layout_errors, **services.load_errors},
            "memory": registry.memory(),
            "tasks": services.supervisor.snapshot(),  # background tasks: restarts and last errors
        }

    async def status(request: Request, body: dict[str, Any]) -> Any:
        return model_status(services, request.path_params["model"])

    async def stage(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        version = str(required(body, "version"))
        force = validation.flag(body.get("force", False), "force")
        live = registry.slots(model).live
        loaded = await commands.stage(model, version, expect_rev=if_match(request), force=force)
        problems = incompatibilities(live.inputs, live.outputs, loaded.inputs, loaded.outputs) if live else []
        if problems and live is not None:  # forced: the audit entry says over what
            differences = "; ".join(problems)
            request.scope[AUDIT_DETAIL] = f"forced over incompatibility with {live.version}: {differences}"
        return {"model": model, "staged": loaded.describe(), "status": model_status(services, model)}

    async def load(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        loaded = await commands.load(model, str(required(body, "version")))
        return {"model": model, "loaded": loaded.describe(), "status": model_status(services, model)}

    async def promote(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        force = validation.flag(body.get("force", False), "force")
        reason = reason_of(request, body)
        await withdrawn.refresh(model)
        notes: list[str] = []
        check = None
        if body.get("check") is not None:  # replay labelled rows through the candidate first
            check = await precheck(model, body["check"])
            notes.append(check.summary())
            if check.verdict != "pass":
                if not force:
                    raise Conflict(f"{check.summary()}. Promote anyway with --force --reason WHY")
                withdrawn.check_promotion(model, check.version, force=True, reason=reason)  # needs a reason

        def vet(candidate: str) -> None:  # a version rolled back for failing its gates needs force
            if check is not None and check.version != candidate:
                raise Conflict(f"model {model!r}: the candidate changed during the check; retry")
            note = withdrawn.check_promotion(model, candidate, force=force, reason=reason)
            if note:
                notes.insert(0, note)

        applied = await commands.promote(model, expect_rev=if_match(request), vet=vet)
        if notes:
            request.scope[AUDIT_DETAIL] = "; ".join(notes)
        assert applied.switch is not None
        withdrawn.clear(model, applied.switch.to_version)
        answer = {"switch": _switch(applied.switch), "status": model_status(services, applied.switch.model)}
        if check is not None:
            answer["check"] = check.to_dict()
        return answer

    async def precheck(model: str, raw: Any) -> CheckResult:
        if not isinstance(raw, dict):
            raise RequestError('"check" must be an object: {"rows": [...]}')
        rows = parse_rows(raw.get("rows"))
        slots = registry.slots(model)
        idle = slots.idle
        if idle is None or slots.idle_role != "candidate" or slots.live is None:
            raise Conflict(f"model {model!r} has no staged candidate to check")
        return await replay(slots.live, idle, rows)

    async def rollback(request: Request, body: dict[str, Any]) -> Any:
        to = body.get("to")
        applied = await commands.rollback(
            request.path_params["model"], to=None if to is None else str(to), expect_rev=if_match(request)
        )
        assert applied.switch is not None
        return {"switch": _switch(applied.switch), "status": model_status(services, applied.switch.model)}

    async def unload(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        version = body.get("version")
        if version is None:
            await registry.unload(model)  # the whole model, on this replica
        else:
            await commands.unload(model, str(version))  # one version, on every replica
        return {"model": model, "unloaded": version or "all"}

    def post(path: str, handler: Handler) -> Route:
        return Route(path, admin_endpoint(services, handler), methods=["POST"])

    def get(path: str, handler: Handler) -> Route:
        return Route(path, admin_endpoint(services, handler), methods=["GET"])

    return [
        get("/admin/models", list_models),
        get("/admin/models/{model}", status),
        post("/admin/models/{model}/stage", stage),
        post("/admin/models/{model}/load", load),
        post("/admin/models/{model}/promote", promote),
        post("/admin/models/{model}/rollback", rollback),
        post("/admin/models/{model}/unload", unload),
    ]


def _switch(switch: Switch) -> dict[str, Any]:
    return dataclasses.asdict(switch)
