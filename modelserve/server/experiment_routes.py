"""Admin routes for experiments (the `ExperimentService` does the work): A/B tests and bandits.

Admin API (bearer token):
    POST /admin/models/{model}/experiment        start: `{"arms": ["1", "2"], "metric": {...}, ...}`
                                                 (an `ExperimentSpec` dict; the first arm is the control)
    GET  /admin/models/{model}/experiment        the report as JSON; `?format=text` the readable table
    POST /admin/models/{model}/experiment/stop   stop; answers the final report
    POST /v2/models/{model}/feedback             `{"request_id": "...", "value": 1, "segments": {...},
                                                 "guardrails": {...}}` or `{"outcomes": [...]}`

Feedback takes a token: outcomes move verdicts and, for bandits, where traffic goes, so an open
endpoint would let any client steer routing or forge a result. The feedback token
(`--feedback-token`) may post outcomes and nothing else, so the service that posts them never holds
the admin token; embedded apps call `record_outcome` in-process.
The answer counts every outcome: `{"accepted": n, "unknown": m, "duplicate": k}` (unknown: never
decided by an experiment, expired, evicted, or another model's id). A bad value fails the whole
batch with 400 before anything is counted. In a fleet (shared coordinator) an outcome joins on
whichever replica receives it, once; with the shared state unreachable the call answers 503 with
`Retry-After` (`experiments/shared.py`).

While the model has a running experiment, every inference response carries `X-Request-Id` (the V2
`id`, the client's `X-Request-Id`, or a generated one). Request headers `x-segment-<name>: <value>`
become segment attributes of the decision (analysed when the spec lists `<name>` in `segments`);
outcome `segments` override them.
The assignment unit is the request (sticky per targeting key), and the SRM check counts requests.
An experiment wins over a canary; a flag variant or an allowed version override wins over it.
State (spec, counters, bandit) is saved as `experiment.<model>` at most every `save_interval_s`,
on stop and at shutdown, and restored at startup.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from modelserve.errors import RequestError
from modelserve.experiments.service import ExperimentService
from modelserve.server.admin import Endpoint, admin_endpoint
from modelserve.server.auth import FEEDBACK
from modelserve.server.services import Services

MAX_BATCH = 10_000


def routes(services: Services, service: ExperimentService) -> list[BaseRoute]:
    async def start(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        await service.start(model, body)
        document = service.report_document(model)
        policy = services.policies.get(model)
        if policy is not None and policy.flag is not None:
            document["warnings"] = [
                f"flag {policy.flag!r} is evaluated before the experiment: "
                "requests it routes are not assigned"
            ]
        return document

    async def get_report(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        await service.refresh(model)  # in a fleet: the shared definition and every replica's counts
        return service.report_document(model)

    async def stop(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        await service.stop(model)
        await service.refresh(model)
        return service.report_document(model)

    async def feedback(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        if model not in services.registry.models and model not in service.experiments:
            services.registry.slots(model)  # NotFound / NotReady with the registry's message
        if "outcomes" in body:
            if set(body) != {"outcomes"}:
                raise RequestError('a batch is {"outcomes": [...]} with no other fields')
            items = body["outcomes"]
            if not isinstance(items, list) or not 0 < len(items) <= MAX_BATCH:
                raise RequestError(f"'outcomes' must be a list of 1..{MAX_BATCH} outcomes")
        else:
            items = [body]
        return await service.submit_outcomes(items, model=model)

    base = "/admin/models/{model}/experiment"
    return [
        Route(base, admin_endpoint(services, start), methods=["POST"]),
        Route(base, as_text(admin_endpoint(services, get_report)), methods=["GET"]),
        Route(base + "/stop", as_text(admin_endpoint(services, stop)), methods=["POST"]),
        Route(
            "/v2/models/{model}/feedback",
            admin_endpoint(services, feedback, scope=FEEDBACK),
            methods=["POST"],
        ),
    ]


def as_text(endpoint: Endpoint) -> Endpoint:
    """`?format=text` answers the report table as text/plain; errors stay V2 JSON."""

    async def respond(request: Request) -> Response:
        response = await endpoint(request)
        if request.query_params.get("format") != "text" or response.status_code != 200:
            return response
        document = orjson.loads(response.body)
        experiment = document["experiment"]
        heading = f"experiment {experiment['id']} ({experiment['state']})\n"
        return PlainTextResponse(heading + document["table"])

    return respond
