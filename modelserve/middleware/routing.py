"""Route decisions for every request: which version serves it, which run in shadow, and why.

`RoutingMiddleware` only puts a `RouteContext` in the scope (under `ROUTE_KEY`); the decision for a
model is made the first time someone asks for it (`context.decide("credit")`): by the V2 infer route,
which knows the model from the URL, or by `modelserve.predict` in an embedding app's own handler. The
decision is then cached in the context, so headers, spans, metrics and feedback all see one object.

Flag evaluation context: `targetingKey` (the policy's targeting header), `model`, and every request
header `x-context-<name>` as `<name>`; an embedding app may add to `context.attributes` before asking.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from modelserve.routing.decision import ROUTE_KEY, RouteDecision
from modelserve.routing.flag_cache import EvaluationCache
from modelserve.routing.flagd import Evaluation
from modelserve.routing.policy import ModelPolicy, decide
from modelserve.serving.registry import ModelRegistry
from modelserve.state.flags import FlagFileSource
from modelserve.state.policies import PolicyTable

log = logging.getLogger("modelserve.routing")

OVERRIDE_HEADER = b"x-model-version"
CONTEXT_PREFIX = b"x-context-"

#: Consulted after the flag and before the canary (experiments, bandits): a decision or None.
ArmDecider = Callable[[ModelPolicy, str | None, frozenset[str]], RouteDecision | None]


class Router:
    """Makes route decisions from the policy table, the slots' readiness and the flags. Never raises."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        policies: PolicyTable,
        flags: FlagFileSource | None = None,
        arm_deciders: Sequence[ArmDecider] = (),
        on_flag_evaluation: Callable[[str, Evaluation], None] | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.flags = flags
        self.cache = EvaluationCache(cache_size)  # event loop only
        #: Consulted in order after the flag and before the canary (experiments, bandits).
        self.arm_deciders: list[ArmDecider] = list(arm_deciders)
        self.errors = 0
        #: Told about every flag evaluation (telemetry counts them).
        self.on_flag_evaluation = on_flag_evaluation

    def decide(self, model: str, context: RouteContext) -> RouteDecision | None:
        """The decision for `model`, or None when the model is not loaded (the route answers 404/503)."""
        slots = self.registry.models.get(model)
        if slots is None or slots.live is None:
            return None
        policy = self.policies.get(model)
        if policy is None:
            policy = self.policies.ensure(model, slots.config, slots.live.version)
        try:
            ready = slots.ready_versions
            key = context.header(policy.targeting_header.encode())
            override = context.header(OVERRIDE_HEADER)
            arms = None
            if self.arm_deciders:
                deciders = self.arm_deciders

                def arms() -> RouteDecision | None:
                    for arm_decider in deciders:
                        assigned = arm_decider(policy, key, ready)
                        if assigned is not None:
                            return assigned
                    return None

            flag_eval = None
            if policy.flag is not None and self.flags is not None:
                flag_eval = self.cache.evaluate(
                    self.flags.flagset, policy.flag, context.flag_context(model, key)
                )
                if self.on_flag_evaluation is not None:
                    self.on_flag_evaluation(model, flag_eval)
            return decide(
                policy,
                ready_versions=ready,
                targeting_key=key,
                override=override,
                flag_eval=flag_eval,
                arms=arms,
            )
        except Exception as exc:  # routing must never fail a request: serve the live version, say why
            self.errors += 1
            log.exception("route decision for %s failed; serving the live version", model)
            return RouteDecision(
                model=model, version=slots.live.version, reason="fallback", detail=f"routing error: {exc}"
            )


class RouteContext:
    """Per-request routing state in the scope; decisions are made lazily and cached per model."""

    __slots__ = ("_headers", "attributes", "decisions", "router")

    def __init__(self, router: Router, headers: list[tuple[bytes, bytes]]) -> None:
        self.router = router
        self._headers = headers
        self.decisions: dict[str, RouteDecision] = {}
        self.attributes: dict[str, Any] = {}

    def decide(self, model: str) -> RouteDecision | None:
        decision = self.decisions.get(model)
        if decision is None:
            decision = self.router.decide(model, self)
            if decision is not None:
                self.decisions[model] = decision
        return decision

    def header(self, name: bytes) -> str | None:
        for key, value in self._headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def flag_context(self, model: str, key: str | None) -> dict[str, Any]:
        context: dict[str, Any] = {"model": model}
        if key is not None:
            context["targetingKey"] = key
        for name, value in self._headers:
            if name.startswith(CONTEXT_PREFIX):
                context[name[len(CONTEXT_PREFIX) :].decode("latin-1")] = value.decode("latin-1")
        if self.attributes:
            context.update(self.attributes)
        return context


class RoutingMiddleware:
    """Pure ASGI: put a `RouteContext` in every HTTP scope. Never raises, never reads the body."""

    def __init__(self, app: ASGIApp, *, router: Router) -> None:
        self.app = app
        self.router = router  # configuration only; nothing per-request on self

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[ROUTE_KEY] = RouteContext(self.router, scope["headers"])
        await self.app(scope, receive, send)
