"""The audit log over HTTP (read token): what changed, when, by whom and why.

GET /admin/history                  the newest entries of every model (`?limit=N`, default 100)
GET /admin/models/{model}/history   the newest entries of one model

Each entry: `seq`, `time` (epoch seconds), `model`, `action`, `actor` (token scope, or `rollout` /
`system`), `reason`, `before`, `after`, `detail` (`state/audit.py`).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from modelserve.errors import RequestError
from modelserve.server.admin import admin_endpoint
from modelserve.server.services import Services

MAX_LIMIT = 10_000


def routes(services: Services) -> list[Route]:
    async def history(request: Request, body: dict[str, Any]) -> Any:
        raw = request.query_params.get("limit", "100")
        if not raw.isdigit() or not 0 < int(raw) <= MAX_LIMIT:
            raise RequestError(f"limit must be an integer within 1..{MAX_LIMIT}")
        model = request.path_params.get("model")
        entries = services.audit.history(model, limit=int(raw))
        return {"model": model, "entries": [entry.to_dict() for entry in entries]}

    endpoint = admin_endpoint(services, history)
    return [
        Route("/admin/history", endpoint, methods=["GET"]),
        Route("/admin/models/{model}/history", endpoint, methods=["GET"]),
    ]
