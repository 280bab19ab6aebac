from __future__ import annotations

import threading
from typing import Any

import anyio
import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from modelserve.middleware.telemetry import SLOT_KEY, TelemetryMiddleware
from modelserve.routing.decision import ROUTE_KEY, RouteDecision
from modelserve.telemetry import metrics as m
from modelserve.telemetry import spans
from modelserve.telemetry.metrics import Metrics
from modelserve.telemetry.spans import Tracing
from modelserve.testing import serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"


class Harness:
    """A Starlette app under TelemetryMiddleware with in-memory span and metric sinks."""

    def __init__(self, *, concurrent: int = 0) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.tracing = Tracing(tracer_provider)
        self.metrics = Metrics(MeterProvider(metric_readers=[self.reader]))
        self.arrived = 0
        self.all_arrived = anyio.Event()
        self.concurrent = concurrent
        self.shadow_done = threading.Event()
        routes = [
            Route("/infer/{model}", self.infer, methods=["POST"]),
            Route("/fail/{model}", self.fail, methods=["POST"]),
            Route("/raise/{model}", self.raise_, methods=["POST"]),
            Route("/shadowed/{model}", self.shadowed, methods=["POST"]),
            Route("/health", self.health),
            Route("/pair", self.pair, methods=["POST"]),
        ]
        middleware = [Middleware(TelemetryMiddleware, tracing=self.tracing, metrics=self.metrics)]
        self.app = Starlette(routes=routes, middleware=middleware)

    def decide(self, request: Request) -> RouteDecision:
        decision = RouteDecision(
            model=request.path_params["model"],
            version=request.query_params.get("version", "1"),
            reason=request.query_params.get("reason", "stable"),
            shadows=tuple(request.query_params.getlist("shadow")),
        )
        request.scope[ROUTE_KEY] = {decision.model: decision}
        request.scope[SLOT_KEY] = request.query_params.get("slot", "blue")
        return decision

    async def infer(self, request: Request) -> Response:
        decision = self.decide(request)
        if self.concurrent:
            self.arrived += 1
            if self.arrived == self.concurrent:
                self.all_arrived.set()
            await self.all_arrived.wait()  # every request is in flight before any finishes
        with self.tracing.inference_span(
            model=decision.model, version=decision.version, reason=decision.reason
        ):
            pass
        return JSONResponse({"model": decision.model}, headers={"x-model-version": decision.version})

    async def fail(self, request: Request) -> Response:
        self.decide(request)
        return PlainTextResponse("model crashed", status_code=500)

    async def raise_(self, request: Request) -> Response:
        self.decide(request)
        raise RuntimeError("session exploded")

    async def shadowed(self, request: Request) -> Response:
        decision = self.decide(request)
        link = self.tracing.current_span_context()
        assert link is not None

        def run_shadow(link: SpanContext) -> None:
            with self.tracing.shadow_span(
                link, model=decision.model, version=decision.shadows[0], primary_version=decision.version
            ) as span:
                Tracing.set_shadow_result(span, outcome="compared", agree=True)
            self.metrics.record_shadow_comparison(decision.model, decision.shadows[0], decision.version, True)
            self.shadow_done.set()

        threading.Thread(target=run_shadow, args=(link,)).start()
        return JSONResponse({"model": decision.model})

    async def pair(self, request: Request) -> Response:
        request.scope[ROUTE_KEY] = {
            "fraud": RouteDecision(model="fraud", version="2", reason="canary"),
            "embed": RouteDecision(model="embed", version="7", reason="stable"),
        }
        request.scope[SLOT_KEY] = {"fraud": "green"}
        return PlainTextResponse("ok")

    async def health(self, request: Request) -> Response:
        return PlainTextResponse("ok")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://test")

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]

    def metric_points(self) -> dict[str, list[Any]]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            metric.name: list(metric.data.data_points)
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
        }


@pytest.mark.anyio
async def test_server_span_carries_http_and_route_decision_attributes() -> None:
    harness = Harness()
    async with harness.client() as client:
        response = await client.post("/infer/fraud?version=2&reason=canary&slot=green&shadow=3")
    assert response.status_code == 200
    (server,) = harness.server_spans()
    assert server.name == "POST /infer/{model}"
    assert dict(server.attributes or {}) == {
        "http.request.method": "POST",
        "url.path": "/infer/fraud",
        "http.route": "/infer/{model}",
        "url.scheme": "http",
        "http.response.status_code": 200,
        spans.MODEL: "fraud",
        spans.VERSION: "2",
        spans.ROUTE_REASON: "canary",
        spans.SLOT: "green",
        spans.ROUTE_SHADOWS: ("3",),
    }
    assert server.status.status_code is StatusCode.UNSET
    (infer,) = [s for s in harness.exporter.get_finished_spans() if s.name == "infer fraud"]
    assert infer.parent is not None and infer.parent.span_id == server.context.span_id


@pytest.mark.anyio
async def test_request_using_two_models_gets_parallel_attributes_and_two_metric_series() -> None:
    harness = Harness()
    async with harness.client() as client:
        await client.post("/pair")
    (server,) = harness.server_spans()
    attributes = dict(server.attributes or {})
    assert attributes[spans.MODEL] == ("fraud", "embed")
    assert attributes[spans.VERSION] == ("2", "7")
    assert attributes[spans.ROUTE_REASON] == ("canary", "stable")
    assert attributes[spans.SLOT] == ("green", "")
    labels = sorted(dict(p.attributes)["model"] for p in harness.metric_points()[m.REQUESTS])
    assert labels == ["embed", "fraud"]


@pytest.mark.anyio
async def test_incoming_traceparent_is_continued() -> None:
    harness = Harness()
    async with harness.client() as client:
        await client.post("/infer/fraud", headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"})
    (server,) = harness.server_spans()
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    assert server.parent.is_remote


@pytest.mark.anyio
async def test_response_passes_through_unchanged() -> None:
    harness = Harness()
    bare = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=Starlette(routes=harness.app.routes)), base_url="http://t"
    )
    async with harness.client() as client, bare:
        wrapped = await client.post("/infer/fraud?version=2")
        unwrapped = await bare.post("/infer/fraud?version=2")
    assert wrapped.status_code == unwrapped.status_code == 200
    assert wrapped.content == unwrapped.content
    assert list(wrapped.headers.items()) == list(unwrapped.headers.items())


@pytest.mark.anyio
async def test_concurrent_requests_never_leak_attributes_or_labels() -> None:
    count = 50
    harness = Harness(concurrent=count)
    reasons = ("stable", "canary", "flag", "experiment", "override")
    statuses: dict[int, int] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        response = await client.post(f"/infer/m{i}?version={i % 3}&reason={reasons[i % 5]}&slot=s{i}")
        statuses[i] = response.status_code

    async with harness.client() as client, anyio.create_task_group() as group:
        for i in range(count):
            group.start_soon(one, client, i)
    assert statuses == dict.fromkeys(range(count), 200)
    servers = harness.server_spans()
    assert len(servers) == count
    assert len({s.context.trace_id for s in servers}) == count
    for server in servers:
        attributes = dict(server.attributes or {})
        i = int(str(attributes["url.path"]).removeprefix("/infer/m"))
        assert attributes[spans.MODEL] == f"m{i}"
        assert attributes[spans.VERSION] == str(i % 3)
        assert attributes[spans.ROUTE_REASON] == reasons[i % 5]
        assert attributes[spans.SLOT] == f"s{i}"
    for infer in (s for s in harness.exporter.get_finished_spans() if s.name.startswith("infer ")):
        (server,) = [s for s in servers if s.context.span_id == infer.parent.span_id]  # type: ignore[union-attr]
        assert infer.attributes[spans.MODEL] == server.attributes[spans.MODEL]  # type: ignore[index]
    requests = harness.metric_points()[m.REQUESTS]
    labels = {
        (dict(p.attributes)["model"], dict(p.attributes)["version"], dict(p.attributes)["route_reason"])
        for p in requests
    }
    assert labels == {(f"m{i}", str(i % 3), reasons[i % 5]) for i in range(count)}
    assert all(p.value == 1 for p in requests)


@pytest.mark.anyio
async def test_server_errors_are_counted_and_mark_the_span() -> None:
    harness = Harness()
    async with harness.client() as client:
        assert (await client.post("/infer/fraud?version=1")).status_code == 200
        assert (await client.post("/fail/fraud?version=2&reason=canary")).status_code == 500
        with pytest.raises(RuntimeError, match="session exploded"):
            await client.post("/raise/fraud?version=2&reason=canary")
    ok, failed, raised = harness.server_spans()
    assert ok.status.status_code is StatusCode.UNSET
    assert failed.status.status_code is StatusCode.ERROR
    assert dict(failed.attributes or {})["http.response.status_code"] == 500
    assert raised.status.status_code is StatusCode.ERROR
    assert [e.name for e in raised.events] == ["exception"]
    points = harness.metric_points()
    (error,) = points[m.ERRORS]
    assert dict(error.attributes) == {
        "model": "fraud",
        "version": "2",
        "role": "primary",
        "route_reason": "canary",
    }
    assert error.value == 2
    assert sum(p.value for p in points[m.REQUESTS]) == 3
    assert sum(p.count for p in points[m.REQUEST_DURATION]) == 3


@pytest.mark.anyio
async def test_requests_without_a_decision_get_a_span_but_no_model_metrics() -> None:
    harness = Harness()
    async with harness.client() as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/nowhere")).status_code == 404
    health, missing = harness.server_spans()
    assert spans.MODEL not in dict(health.attributes or {})
    assert dict(missing.attributes or {})["http.response.status_code"] == 404
    assert missing.status.status_code is StatusCode.UNSET
    data = harness.reader.get_metrics_data()
    assert data is None or not any(
        metric.name == m.REQUESTS
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )


@pytest.mark.anyio
async def test_shadow_span_from_a_worker_thread_is_linked_to_the_server_span() -> None:
    harness = Harness()
    async with harness.client() as client:
        await client.post("/shadowed/fraud?version=1&shadow=2")
    assert harness.shadow_done.wait(timeout=10)
    (server,) = harness.server_spans()
    (shadow,) = [s for s in harness.exporter.get_finished_spans() if s.name == "shadow fraud"]
    assert shadow.parent is None
    assert [(link.context.trace_id, link.context.span_id) for link in shadow.links] == [
        (server.context.trace_id, server.context.span_id)
    ]
    assert dict(shadow.attributes or {})[spans.SHADOW_AGREE] is True
    (agreement,) = harness.metric_points()[m.SHADOW_AGREEMENTS]
    assert dict(agreement.attributes) == {"model": "fraud", "version": "2", "primary_version": "1"}


@pytest.mark.anyio
async def test_disabled_telemetry_passes_requests_and_lifespan_straight_through() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})

    middleware = TelemetryMiddleware(app, tracing=Tracing(trace.NoOpTracerProvider()))
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=middleware), base_url="http://t"
    ) as client:
        assert (await client.get("/")).status_code == 204
    assert seen == ["lifespan", "http"]


def test_real_uvicorn_server_continues_the_incoming_trace() -> None:
    harness = Harness()
    with serve(harness.app) as server:
        response = httpx.post(
            f"{server.url}/infer/fraud?version=2&reason=flag",
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
        )
    assert response.status_code == 200
    (span,) = harness.server_spans()
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert dict(span.attributes or {})[spans.ROUTE_REASON] == "flag"
