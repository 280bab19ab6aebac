"""The route decision: one object per request, feeding headers, spans, metrics and feedback."""

from __future__ import annotations

from typing import NamedTuple, Protocol

#: Key under which the routing middleware stores the request's RouteContext in the ASGI scope.
ROUTE_KEY = "modelserve.route"

#: Reasons a version was chosen. `pinned`: the client named the version in the URL.
REASONS = ("pinned", "override", "flag", "experiment", "bandit", "canary", "stable", "fallback")


class RouteDecision(NamedTuple):
    """Which version serves a request (`version`), which run in shadow, and why.

    `detail` carries the human-readable evidence, e.g. the flag variant or the error that made the
    decision fall back to the live version. Immutable; a NamedTuple rather than a frozen dataclass
    because one is built per request and it constructs in a third of the time. Build it with keywords.
    """

    model: str
    version: str
    reason: str
    shadows: tuple[str, ...] = ()
    targeting_key: str | None = None
    arm: str | None = None
    detail: str = ""


class RouteSource(Protocol):
    """What the routing middleware leaves in the scope under `ROUTE_KEY` (a `RouteContext`)."""

    decisions: dict[str, RouteDecision]

    def decide(self, model: str) -> RouteDecision | None: ...
