"""TelemetryMiddleware: a SERVER span and request metrics per HTTP request, pure ASGI.

The span continues an incoming W3C `traceparent`. After the wrapped app has run, the route decisions
of the request become span attributes and metric labels: the decisions actually served, when an
inference observer recorded them (`scope[SERVED_KEY]`, model -> RouteDecision, including versions
pinned in the URL), else those made through the routing middleware's `RouteContext` at
`scope[ROUTE_KEY]` (a plain model -> RouteDecision mapping there is accepted too); the slot comes
from `scope[SLOT_KEY]`. Everything
per request lives in locals of `__call__`; the middleware object holds configuration only. The
response is passed through untouched; only its status is read.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping
from contextvars import Token
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelserve.middleware.routing import RouteContext
from modelserve.routing.decision import ROUTE_KEY, RouteDecision
from modelserve.telemetry.metrics import Metrics
from modelserve.telemetry.spans import (
    MODEL,
    ROLE_PRIMARY,
    ROUTE_ARM,
    ROUTE_REASON,
    ROUTE_SHADOWS,
    SERVED_KEY,
    SLOT,
    SLOT_KEY,
    VERSION,
    Tracing,
)

_TRACE_HEADERS = {b"traceparent": "traceparent", b"tracestate": "tracestate"}
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE"})


class TelemetryMiddleware:
    """Open a SERVER span per HTTP request and record request metrics per route decision.

    `metrics=None` records spans only. Requests that carry no route decision (health, metadata,
    /metrics) get a span but no modelserve request metrics.
    """

    def __init__(self, app: ASGIApp, *, tracing: Tracing, metrics: Metrics | None = None) -> None:
        self.app = app
        self.tracing = tracing
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (not self.tracing.enabled and self.metrics is None):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 0

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        span, token = self._start_span(scope) if self.tracing.enabled else (None, None)
        failed = False
        try:
            await self.app(scope, receive, send_with_status)
        except BaseException as exc:
            failed = True
            if span is not None and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            if status == 0 and failed:
                status = 500  # the server will answer 500 for an app that raised before responding
            decisions = request_decisions(scope)
            if span is not None:
                if span.is_recording():
                    _finish_attributes(span, scope, status, decisions)
                span.end()
            if token is not None:
                otel_context.detach(token)
            if self.metrics is not None and decisions:
                latency = time.perf_counter() - start
                error = failed or status >= 500
                for decision in decisions.values():
                    self.metrics.record_request(
                        decision.model, decision.version, ROLE_PRIMARY, decision.reason, latency, error
                    )

    def _start_span(self, scope: Scope) -> tuple[Span, Token[Context]]:
        carrier: dict[str, str] = {}
        for name, value in scope.get("headers", ()):
            header = _TRACE_HEADERS.get(name)
            if header is not None:
                carrier[header] = value.decode("latin-1")
        parent = self.tracing.propagator.extract(carrier) if carrier else None
        method = scope["method"]
        span = self.tracing.tracer.start_span(
            method if method in _KNOWN_METHODS else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
            },
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return span, token


def request_decisions(scope: Scope) -> Mapping[str, RouteDecision] | None:
    """The route decisions of a request: those served (`SERVED_KEY`), else those routing made."""
    served = scope.get(SERVED_KEY)
    if served:
        result: Mapping[str, RouteDecision] | None = served
        return result
    route = scope.get(ROUTE_KEY)
    if isinstance(route, RouteContext):
        return route.decisions
    return route if isinstance(route, Mapping) else None


def _finish_attributes(
    span: Span, scope: MutableMapping[str, Any], status: int, decisions: Mapping[str, RouteDecision] | None
) -> None:
    # One set_attributes call: the SDK validates and locks per call, so batching is cheaper.
    attributes = _decision_attributes(decisions, scope.get(SLOT_KEY)) if decisions else {}
    if status:
        attributes["http.response.status_code"] = status
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
    route = getattr(scope.get("route"), "path", None)  # the router leaves the matched route here
    if isinstance(route, str):
        attributes["http.route"] = route
        span.update_name(f"{scope['method']} {route}")
    span.set_attributes(attributes)


def _decision_attributes(decisions: Mapping[str, RouteDecision], slot: object) -> dict[str, AttributeValue]:
    """Scalar attributes for the usual single decision; parallel sequences when a request used several."""
    values = list(decisions.values())
    slots = [_slot_of(slot, decision.model) for decision in values]
    attributes: dict[str, AttributeValue]
    if len(values) == 1:
        decision = values[0]
        attributes = {MODEL: decision.model, VERSION: decision.version, ROUTE_REASON: decision.reason}
        if slots[0]:
            attributes[SLOT] = slots[0]
        if decision.arm:
            attributes[ROUTE_ARM] = decision.arm
        if decision.shadows:
            attributes[ROUTE_SHADOWS] = list(decision.shadows)
        return attributes
    attributes = {
        MODEL: [d.model for d in values],
        VERSION: [d.version for d in values],
        ROUTE_REASON: [d.reason for d in values],
    }
    if any(slots):
        attributes[SLOT] = [s or "" for s in slots]
    return attributes


def _slot_of(slot: object, model: str) -> str | None:
    if isinstance(slot, str):
        return slot
    if isinstance(slot, Mapping):
        value = slot.get(model)
        return value if isinstance(value, str) else None
    return None
