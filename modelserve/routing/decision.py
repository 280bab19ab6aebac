"""The route decision: one object per request, feeding headers, spans, metrics and feedback."""

from __future__ import annotations

from dataclasses import dataclass

#: Key under which middleware stores the decisions dict (model name -> RouteDecision) in the ASGI scope.
ROUTE_KEY = "modelserve.route"

#: Reasons a version was chosen. `pinned`: the client named the version in the URL.
REASONS = ("pinned", "override", "flag", "experiment", "bandit", "canary", "stable", "fallback")


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDecision:
    """Which version serves a request (`version`), which run in shadow, and why.

    `detail` carries the human-readable evidence, e.g. the flag variant or the error that made the
    decision fall back to the live version.
    """

    model: str
    version: str
    reason: str
    shadows: tuple[str, ...] = ()
    targeting_key: str | None = None
    arm: str | None = None
    detail: str = ""
