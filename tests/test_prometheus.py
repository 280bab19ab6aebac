from __future__ import annotations

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelserve.telemetry.metrics import LATENCY_BUCKETS_S, Metrics, RolloutReading
from modelserve.telemetry.prometheus import CONTENT_TYPE, PrometheusReader, metrics_app, render


@pytest.fixture
def reader() -> PrometheusReader:
    return PrometheusReader()


@pytest.fixture
def metrics(reader: PrometheusReader) -> Metrics:
    provider = MeterProvider(metric_readers=[reader], resource=Resource({"service.name": "modelserve-test"}))
    return Metrics(provider)


def scrape(reader: PrometheusReader) -> dict[str, list[Sample]]:
    """Family name -> samples, parsed by prometheus_client's own text parser."""
    body, content_type = reader.exposition()
    assert content_type == CONTENT_TYPE
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def test_requests_are_exposed_per_version_and_reason(metrics: Metrics, reader: PrometheusReader) -> None:
    metrics.record_request("fraud", "1", "primary", "stable", 0.0004, False)
    metrics.record_request("fraud", "2", "primary", "canary", 0.003, True)
    metrics.record_request("fraud", "2", "primary", "canary", 0.004, False)
    families = scrape(reader)
    requests = {
        s.labels["version"]: s.value for s in families["modelserve_requests"] if s.name.endswith("_total")
    }
    assert requests == {"1": 1.0, "2": 2.0}
    (error,) = [s for s in families["modelserve_errors"] if s.name.endswith("_total")]
    assert error.labels == {"model": "fraud", "version": "2", "role": "primary", "route_reason": "canary"}
    assert error.value == 1.0


def test_latency_histogram_has_cumulative_buckets_sum_and_count(
    metrics: Metrics, reader: PrometheusReader
) -> None:
    for latency in (0.00003, 0.0004, 0.0004, 2.0):
        metrics.record_request("fraud", "1", "primary", "stable", latency, False)
    samples = scrape(reader)["modelserve_request_duration_seconds"]
    buckets = {float(s.labels["le"]): s.value for s in samples if s.name.endswith("_bucket")}
    assert sorted(buckets) == [*LATENCY_BUCKETS_S, float("inf")]
    assert buckets[0.00001] == 0
    assert buckets[0.00005] == 1
    assert buckets[0.0005] == 3
    assert buckets[2.5] == 4 and buckets[float("inf")] == 4
    (count,) = [s.value for s in samples if s.name.endswith("_count")]
    (total,) = [s.value for s in samples if s.name.endswith("_sum")]
    assert count == 4 and total == pytest.approx(2.00083)


def test_gauges_shadow_counters_and_target_info_are_exposed(
    metrics: Metrics, reader: PrometheusReader
) -> None:
    metrics.set_rollout_source(
        lambda: [
            RolloutReading(model="fraud", stage="canary-5", stage_index=1, canary_weight=0.05, candidate="2")
        ]
    )
    metrics.record_shadow_comparison("fraud", "2", "1", agree=True)
    metrics.add_in_flight("fraud", "1", +1)
    families = scrape(reader)
    (stage,) = families["modelserve_rollout_stage"]
    assert stage.labels == {"model": "fraud", "candidate": "2", "stage": "canary-5"} and stage.value == 1
    (weight,) = families["modelserve_canary_weight_ratio"]
    assert weight.value == 0.05
    (in_flight,) = families["modelserve_in_flight"]
    assert in_flight.value == 1
    (agreement,) = [s for s in families["modelserve_shadow_agreements"] if s.name.endswith("_total")]
    assert agreement.labels == {"model": "fraud", "version": "2", "primary_version": "1"}
    (target,) = families["target_info"]
    assert target.labels["service_name"] == "modelserve-test"


def test_label_values_are_escaped_so_the_parser_reads_them_back(
    metrics: Metrics, reader: PrometheusReader
) -> None:
    awkward = 'we"ird\\name\nx'
    metrics.record_flag_evaluation(awkward, "v2", "SPLIT")
    (sample,) = [s for s in scrape(reader)["modelserve_flag_evaluations"] if s.name.endswith("_total")]
    assert sample.labels["flag"] == awkward


def test_reader_attached_after_instruments_exist_sees_them() -> None:
    provider = MeterProvider()
    metrics = Metrics(provider)
    reader = PrometheusReader()
    reader.attach(provider)
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    assert "modelserve_requests" in scrape(reader)


def test_render_of_nothing_is_empty() -> None:
    assert render(None) == ""


@pytest.mark.anyio
async def test_metrics_app_serves_get_and_refuses_post(metrics: Metrics, reader: PrometheusReader) -> None:
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    transport = httpx.ASGITransport(app=metrics_app(reader))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
        refused = await client.post("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert 'modelserve_requests_total{model="fraud"' in response.text
    assert refused.status_code == 405
