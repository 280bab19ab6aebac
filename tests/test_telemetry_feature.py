"""Telemetry wired into the app: spans, links, metric labels and /metrics, end to end."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanContext, SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from modelserve.config import ServerConfig
from modelserve.inference.path import InferenceRecord
from modelserve.rollout.plan import plan_from_dict
from modelserve.server.app import create_app
from modelserve.server.services import Extension, ExtensionFactory, FeatureSet, Hooks, Services
from modelserve.shadow.runner import ShadowResult
from modelserve.telemetry import metrics as m
from modelserve.telemetry import spans
from modelserve.testing import serve

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TOKEN = "t0k"
BODY = orjson.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16], "data": [0.5] * 16}]})
ADMIN = {"authorization": f"Bearer {TOKEN}"}


class ServerSpanWaiter(SpanProcessor):
    """Lets a test wait until N server spans have ended (the response reaches the client first)."""

    def __init__(self) -> None:
        self.ended = 0
        self.condition = threading.Condition()

    def on_end(self, span: ReadableSpan) -> None:
        if span.kind is SpanKind.SERVER:
            with self.condition:
                self.ended += 1
                self.condition.notify_all()

    def wait_for(self, count: int) -> None:
        with self.condition:
            assert self.condition.wait_for(lambda: self.ended >= count, timeout=30)


class Sinks:
    """In-memory span exporter and metric reader on providers passed to `create_app`."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.waiter = ServerSpanWaiter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer_provider.add_span_processor(self.waiter)
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])

    def app(
        self,
        config: ServerConfig,
        features: FeatureSet | None = None,
        extensions: list[ExtensionFactory] | None = None,
    ) -> Starlette:
        return create_app(
            config,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            features=features,
            extensions=extensions or [],
        )

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def server_spans(self) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.kind is SpanKind.SERVER]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        data = self.reader.get_metrics_data()
        found = []
        for resource_metrics in data.resource_metrics if data is not None else ():
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name:
                        found += [(dict(p.attributes or {}), p) for p in metric.data.data_points]
        return found


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def labels(model: str, version: str, reason: str) -> dict[str, str]:
    return {"model": model, "version": version, "role": "primary", "route_reason": reason}


@pytest.fixture
def config(model_repo: Path) -> ServerConfig:
    return ServerConfig(repository=model_repo, state_dir=None, admin_token=TOKEN)


@asynccontextmanager
async def running(app: Starlette) -> AsyncIterator[tuple[httpx.AsyncClient, Services]]:
    """The app with its lifespan (models loaded warm), driven in-process through ASGITransport."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, app.state.services


@pytest.mark.anyio
async def test_canary_request_has_a_server_span_an_inference_child_and_version_labels(
    config: ServerConfig,
) -> None:
    sinks = Sinks()
    async with running(sinks.app(config)) as (client, services):
        await services.registry.stage("fraud", "1")  # live v2 in blue, candidate v1 in green
        services.policies.update("fraud", candidate="1", canary_weight=100.0)
        response = await client.post("/v2/models/fraud/infer", content=BODY, headers={"x-user-id": "u1"})
    assert (response.headers["x-model-version"], response.headers["x-route-reason"]) == ("1", "canary")

    (server,) = sinks.server_spans()
    assert server.name == "POST /v2/models/{model}/infer"
    assert (
        attributes(server).items()
        >= {
            spans.MODEL: "fraud",
            spans.VERSION: "1",
            spans.ROUTE_REASON: "canary",
            spans.SLOT: "green",
            "http.response.status_code": 200,
        }.items()
    )
    (child,) = sinks.spans("infer fraud")
    assert child.parent is not None and child.parent.span_id == server.context.span_id
    assert child.context.trace_id == server.context.trace_id
    assert attributes(child) == {
        spans.MODEL: "fraud",
        spans.VERSION: "1",
        spans.ROLE: "primary",
        spans.ROUTE_REASON: "canary",
        spans.SLOT: "green",
        spans.BATCH_SIZE: 1,
        spans.INPUT_SHAPES: ("input:1x16",),
    }
    assert child.start_time is not None and child.end_time is not None and server.end_time is not None
    assert child.start_time < child.end_time <= server.end_time

    assert [(a, p.value) for a, p in sinks.points(m.REQUESTS)] == [(labels("fraud", "1", "canary"), 1)]
    ((duration_labels, duration),) = sinks.points(m.REQUEST_DURATION)
    assert duration_labels == labels("fraud", "1", "canary") and duration.count == 1
    weights = [(a, p.value) for a, p in sinks.points(m.CANARY_WEIGHT) if a["model"] == "fraud"]
    assert weights == [({"model": "fraud", "candidate": "1"}, 1.0)]
    assert sinks.points(m.ROLLOUT_STAGE) == []  # no rollout running


@pytest.mark.anyio
async def test_after_a_rollback_spans_and_metrics_show_the_restored_version_and_slot(
    config: ServerConfig,
) -> None:
    sinks = Sinks()
    async with running(sinks.app(config)) as (client, services):
        await services.registry.stage("fraud", "1")
        await services.registry.promote("fraud")  # v1 live in green, v2 kept warm in blue
        before = await client.post("/v2/models/fraud/infer", content=BODY)
        await services.registry.rollback("fraud")
        after = await client.post("/v2/models/fraud/infer", content=BODY)
    assert before.headers["x-model-version"] == "1" and after.headers["x-model-version"] == "2"

    children = sorted(sinks.spans("infer fraud"), key=lambda s: s.start_time or 0)
    assert [(attributes(s)[spans.VERSION], attributes(s)[spans.SLOT]) for s in children] == [
        ("1", "green"),
        ("2", "blue"),
    ]
    servers = sorted(sinks.server_spans(), key=lambda s: s.start_time or 0)
    assert [attributes(s)[spans.VERSION] for s in servers] == ["1", "2"]
    counts = {(a["version"], a["route_reason"]): p.value for a, p in sinks.points(m.REQUESTS)}
    assert counts == {("1", "stable"): 1, ("2", "stable"): 1}


@pytest.mark.anyio
async def test_pinned_version_and_server_errors_are_labelled_and_counted_once(config: ServerConfig) -> None:
    sinks = Sinks()
    async with running(sinks.app(config)) as (client, _):
        pinned = await client.post("/v2/models/fraud/versions/2/infer", content=BODY)
        bad = await client.post("/v2/models/fraud/infer", content=b"{")
    assert pinned.status_code == 200 and bad.status_code == 400
    by_path = {attributes(s)["url.path"]: attributes(s) for s in sinks.server_spans()}
    assert by_path["/v2/models/fraud/versions/2/infer"][spans.ROUTE_REASON] == "pinned"
    requests = {(a["version"], a["route_reason"]): p.value for a, p in sinks.points(m.REQUESTS)}
    assert requests == {("2", "pinned"): 1, ("2", "stable"): 1}
    assert sinks.points(m.ERRORS) == []  # a client error is a request, not a server error


def test_incoming_traceparent_is_continued_over_a_real_server(config: ServerConfig) -> None:
    sinks = Sinks()
    with serve(sinks.app(config)) as server:
        response = httpx.post(
            f"{server.url}/v2/models/fraud/infer",
            content=BODY,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
        )
        sinks.waiter.wait_for(1)
    assert response.status_code == 200
    (server_span,) = sinks.server_spans()
    (child,) = sinks.spans("infer fraud")
    assert format(server_span.context.trace_id, "032x") == TRACE_ID
    assert server_span.parent is not None and format(server_span.parent.span_id, "016x") == PARENT_SPAN_ID
    assert child.context.trace_id == server_span.context.trace_id


def test_fifty_concurrent_requests_with_different_decisions_keep_their_own_attributes(
    config: ServerConfig,
) -> None:
    sinks = Sinks()
    count = 50
    results: dict[str, httpx.Response] = {}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        trace_id = f"{i + 1:032x}"
        path = {0: "/v2/models/fraud/versions/1/infer", 1: "/v2/models/fraud/versions/2/infer"}.get(
            i % 3, "/v2/models/fraud/infer"
        )
        headers = {"traceparent": f"00-{trace_id}-{PARENT_SPAN_ID}-01", "x-user-id": f"user-{i}"}
        results[trace_id] = await client.post(path, content=BODY, headers=headers)

    async def drive(url: str) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client, anyio.create_task_group() as tg:
            for i in range(count):
                tg.start_soon(one, client, i)

    with serve(sinks.app(config)) as server:
        httpx.post(f"{server.url}/admin/models/fraud/stage", json={"version": "1"}, headers=ADMIN)
        canary = httpx.post(
            f"{server.url}/admin/models/fraud/canary", json={"percent": 50, "candidate": "1"}, headers=ADMIN
        )
        assert canary.status_code == 200
        already = len(sinks.server_spans())
        anyio.run(drive, server.url)
        sinks.waiter.wait_for(already + count)

    decisions = {(r.headers["x-model-version"], r.headers["x-route-reason"]) for r in results.values()}
    assert {("1", "pinned"), ("2", "pinned"), ("1", "canary")} <= decisions  # genuinely mixed
    by_trace: dict[str, list[ReadableSpan]] = {}
    for span in sinks.spans():
        by_trace.setdefault(format(span.context.trace_id, "032x"), []).append(span)
    slot_of = {"1": "green", "2": "blue"}
    for trace_id, response in results.items():
        version, reason = response.headers["x-model-version"], response.headers["x-route-reason"]
        assert response.json()["model_version"] == version
        (server_span,) = [s for s in by_trace[trace_id] if s.kind is SpanKind.SERVER]
        (child,) = [s for s in by_trace[trace_id] if s.name == "infer fraud"]
        for span in (server_span, child):
            values = attributes(span)
            assert (values[spans.VERSION], values[spans.ROUTE_REASON]) == (version, reason)
            assert values[spans.SLOT] == slot_of[version]
    tally: dict[tuple[str, str], int] = {}
    for response in results.values():
        key = (response.headers["x-model-version"], response.headers["x-route-reason"])
        tally[key] = tally.get(key, 0) + 1
    counted = {(a["version"], a["route_reason"]): p.value for a, p in sinks.points(m.REQUESTS)}
    assert counted == tally


def test_metrics_endpoint_works_out_of_the_box_and_parses_with_per_version_series(
    config: ServerConfig, tmp_path: Path
) -> None:
    flags = tmp_path / "flags.json"
    flags.write_text(
        json.dumps(
            {
                "flags": {
                    "fraud-version": {"state": "ENABLED", "variants": {"v2": "2"}, "defaultVariant": "v2"}
                }
            }
        )
    )
    config = ServerConfig(repository=config.repository, state_dir=None, admin_token=TOKEN, flags_file=flags)
    sinks = Sinks()  # traces only, to know when requests finished: no meter provider is passed
    app = create_app(config, tracer_provider=sinks.tracer_provider)
    with serve(app) as server:
        base = server.url
        assert httpx.post(f"{base}/admin/models/fraud/stage", json={"version": "1"}, headers=ADMIN).is_success
        assert httpx.post(
            f"{base}/admin/models/fraud/policy", json={"flag": "fraud-version"}, headers=ADMIN
        ).is_success
        already = len(sinks.server_spans())
        for _ in range(3):
            assert (
                httpx.post(f"{base}/v2/models/fraud/infer", content=BODY).headers["x-route-reason"] == "flag"
            )
        assert httpx.post(f"{base}/v2/models/fraud/versions/1/infer", content=BODY).status_code == 200
        sinks.waiter.wait_for(already + 4)  # observers (metrics) ran before each server span ended
        scrape = httpx.get(f"{base}/metrics")
    assert scrape.status_code == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(scrape.text)}
    requests = {
        (s.labels["version"], s.labels["route_reason"]): s.value
        for s in families["modelserve_requests"].samples
        if s.name == "modelserve_requests_total"
    }
    assert requests == {("2", "flag"): 3.0, ("1", "pinned"): 1.0}
    buckets = [
        s for s in families["modelserve_request_duration_seconds"].samples if s.name.endswith("_count")
    ]
    assert {s.labels["version"]: s.value for s in buckets} == {"2": 3.0, "1": 1.0}
    (flag_sample,) = [s for s in families["modelserve_flag_evaluations"].samples if s.name.endswith("_total")]
    assert flag_sample.labels == {"flag": "fraud-version", "variant": "v2", "reason": "STATIC"}
    assert flag_sample.value == 3.0
    weights = {s.labels["model"]: s for s in families["modelserve_canary_weight_ratio"].samples}
    assert weights["fraud"].labels == {"model": "fraud", "candidate": ""}  # staged, no canary named
    assert weights["fraud"].value == 0.0


@pytest.mark.anyio
@pytest.mark.parametrize("provider", [None, trace.NoOpTracerProvider()], ids=["global", "noop"])
async def test_default_tracer_provider_adds_no_spans_but_metrics_still_count(
    config: ServerConfig, provider: trace.TracerProvider | None
) -> None:
    seen: list[tuple[bool, object]] = []

    def probe(services: Services) -> Extension:
        telemetry = services.telemetry
        assert telemetry is not None

        def observe(record: InferenceRecord) -> None:
            recording = trace.get_current_span().is_recording()
            seen.append((recording, telemetry.request_span_context(record)))

        return Extension(hooks=Hooks(observers=[observe]))

    reader = InMemoryMetricReader()
    app = create_app(
        config,
        tracer_provider=provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        features=FeatureSet(shadow=False, experiments=False, rollout=False),
        extensions=[probe],
    )
    async with running(app) as (client, _):
        response = await client.post(
            "/v2/models/fraud/infer",
            content=BODY,
            headers={"traceparent": f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"},
        )
        assert response.status_code == 200
    ((recording, link),) = seen
    assert not recording
    if provider is None:  # the API's no-op tracer still propagates the incoming context, as OTel says
        assert isinstance(link, SpanContext) and link.is_remote and link.span_id == int(PARENT_SPAN_ID, 16)
    else:  # an explicit no-op provider switches the middleware off entirely
        assert link is None
    data = reader.get_metrics_data()
    assert data is not None
    names = {metric.name for rm in data.resource_metrics for sm in rm.scope_metrics for metric in sm.metrics}
    assert m.REQUESTS in names


def test_shadow_span_from_the_shadow_service_links_the_request_and_carries_its_evidence(
    config: ServerConfig,
) -> None:
    """The shipped path: a shadow switched on over the admin API, a request over HTTP, one span."""
    sinks = Sinks()
    app = sinks.app(config)
    services: Services = app.state.services
    with serve(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        assert (
            client.post("/admin/models/fraud/stage", json={"version": "1"}, headers=ADMIN).status_code == 200
        )
        shadow = client.post(
            "/admin/models/fraud/shadow", json={"versions": ["1"], "rate": 1.0}, headers=ADMIN
        )
        assert shadow.status_code == 200
        response = client.post("/v2/models/fraud/infer", content=BODY, headers={"x-request-id": "req-7"})
        assert response.status_code == 200 and response.headers["x-model-version"] == "2"
        assert services.shadow.runner.wait_idle(30)
        sinks.waiter.wait_for(3)
    (server_span,) = [
        s for s in sinks.server_spans() if attributes(s)["url.path"] == "/v2/models/fraud/infer"
    ]
    (shadow_span,) = sinks.spans("shadow fraud")
    assert shadow_span.parent is None
    assert [link.context.span_id for link in shadow_span.links] == [server_span.context.span_id]
    values = attributes(shadow_span)
    assert values[spans.ROLE] == "shadow" and values[spans.VERSION] == "1" and values[spans.SLOT] == "green"
    assert values[spans.SHADOW_PRIMARY_VERSION] == "2" and values[spans.SHADOW_OUTCOME] == "compared"
    assert values["modelserve.request_id"] == "req-7"
    agree = values[spans.SHADOW_AGREE]
    assert isinstance(agree, bool)
    assert values["modelserve.shadow.agreement"] == (1.0 if agree else 0.0)  # one row: all or nothing
    assert values[spans.SHADOW_DETAIL] == f"{int(agree)} of 1 rows agree"
    comparisons = sinks.points(m.SHADOW_COMPARISONS)
    assert [(a, p.value) for a, p in comparisons] == [
        ({"model": "fraud", "version": "1", "primary_version": "2"}, 1)
    ]
    assert len(sinks.points(m.SHADOW_AGREEMENTS)) == int(agree)


@pytest.mark.anyio
async def test_shadow_timeouts_drops_and_rollout_events_are_recorded(config: ServerConfig) -> None:
    sinks = Sinks()
    async with running(sinks.app(config)) as (_, services):
        telemetry = services.telemetry
        now = time.time_ns()
        result = ShadowResult(
            model="fraud", primary_version="2", shadow_version="1", request_id="r-1", context=None,
            comparison=None, primary_latency_s=0.001, shadow_latency_s=None, error=None, timed_out=True,
            start_time_ns=None, end_time_ns=now,
        )  # fmt: skip
        await anyio.to_thread.run_sync(telemetry.on_shadow_result, result)  # from a worker thread
        telemetry.record_shadow_drop("fraud", "1", "2")
        telemetry.record_event("rollback", {"model": "fraud", "evidence": {"p95_ms": 12.5, "samples": 400}})
    (shadow,) = sinks.spans("shadow fraud")
    assert shadow.status.status_code is StatusCode.ERROR and not shadow.links
    assert attributes(shadow)[spans.SHADOW_OUTCOME] == "timeout"
    shadow_labels = {"model": "fraud", "version": "1", "primary_version": "2"}
    assert [(a, p.value) for a, p in sinks.points(m.SHADOW_TIMEOUTS)] == [(shadow_labels, 1)]
    assert [(a, p.value) for a, p in sinks.points(m.SHADOW_DROPS)] == [(shadow_labels, 1)]
    (rollout,) = sinks.spans(spans.ROLLOUT_SPAN)
    (event,) = rollout.events
    assert event.name == "rollback"
    assert dict(event.attributes or {}) == {
        "model": "fraud",
        "evidence.p95_ms": 12.5,
        "evidence.samples": 400,
    }


@pytest.mark.anyio
async def test_rollout_stage_and_canary_weight_gauges_follow_policy_and_rollout(config: ServerConfig) -> None:
    sinks = Sinks()
    async with running(sinks.app(config)) as (_, services):
        assert services.rollout is not None
        stages = [{"name": f"canary-{weight}", "weight": weight} for weight in (1, 5, 25, 100)]
        plan = plan_from_dict({"stages": stages}, default_name="test", where="test")
        await services.rollout.start("fraud", "1", plan)  # stages version 1 as the candidate
        for _ in range(2):
            await services.rollout.controller.promote("fraud")  # skip on to canary-25
        weights = [(a, p.value) for a, p in sinks.points(m.CANARY_WEIGHT)]
        stages = [(a, p.value) for a, p in sinks.points(m.ROLLOUT_STAGE)]
    assert ({"model": "fraud", "candidate": "1"}, 0.25) in weights
    assert stages == [({"model": "fraud", "candidate": "1", "stage": "canary-25"}, 2)]
