"""`/metrics` through prometheus_client: modelserve's tallies as Prometheus families."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from modelserve.telemetry.metrics import LATENCY_BUCKETS_S, Metrics, RolloutReading
from modelserve.telemetry.prometheus import CONTENT_TYPE, MetricsCollector, metrics_app


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()  # no meter provider: no OTel at all, /metrics only


@pytest.fixture
def registry(metrics: Metrics) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(MetricsCollector(metrics))
    return registry


def scrape(registry: CollectorRegistry) -> dict[str, list[Sample]]:
    """Family name -> samples, parsed by prometheus_client's own text parser."""
    body = generate_latest(registry)
    return {family.name: family.samples for family in text_string_to_metric_families(body.decode())}


def test_requests_are_exposed_per_version_and_reason(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record_request("fraud", "1", "primary", "stable", 0.0004, False)
    metrics.record_request("fraud", "2", "primary", "canary", 0.003, True)
    metrics.record_request("fraud", "2", "primary", "canary", 0.004, False)
    families = scrape(registry)
    requests = {
        s.labels["version"]: s.value for s in families["modelserve_requests"] if s.name.endswith("_total")
    }
    assert requests == {"1": 1.0, "2": 2.0}
    (error,) = [s for s in families["modelserve_errors"] if s.name.endswith("_total")]
    assert error.labels == {"model": "fraud", "version": "2", "role": "primary", "route_reason": "canary"}
    assert error.value == 1.0


def test_latency_histogram_has_cumulative_buckets_sum_and_count(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    for latency in (0.00003, 0.0004, 0.0004, 2.0):
        metrics.record_request("fraud", "1", "primary", "stable", latency, False)
    samples = scrape(registry)["modelserve_request_duration_seconds"]
    buckets = {float(s.labels["le"]): s.value for s in samples if s.name.endswith("_bucket")}
    assert sorted(buckets) == [*LATENCY_BUCKETS_S, float("inf")]
    assert buckets[0.00001] == 0
    assert buckets[0.00005] == 1
    assert buckets[0.0005] == 3
    assert buckets[2.5] == 4 and buckets[float("inf")] == 4
    (count,) = [s.value for s in samples if s.name.endswith("_count")]
    (total,) = [s.value for s in samples if s.name.endswith("_sum")]
    assert count == 4 and total == pytest.approx(2.00083)


def test_rollout_gauges_and_shadow_counters_are_exposed(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    metrics.set_rollout_source(
        lambda: [
            RolloutReading(model="fraud", stage="canary-5", stage_index=1, canary_weight=0.05, candidate="2")
        ]
    )
    metrics.record_shadow_comparison("fraud", "2", "1", agree=True)
    families = scrape(registry)
    (stage,) = families["modelserve_rollout_stage"]
    assert stage.labels == {"model": "fraud", "candidate": "2", "stage": "canary-5"} and stage.value == 1
    (weight,) = families["modelserve_canary_weight_ratio"]
    assert weight.value == 0.05
    (agreement,) = [s for s in families["modelserve_shadow_agreements"] if s.name.endswith("_total")]
    assert agreement.labels == {"model": "fraud", "version": "2", "primary_version": "1"}


def test_a_failing_rollout_source_leaves_the_rest_of_the_scrape_intact(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    def broken() -> list[RolloutReading]:
        raise RuntimeError("no rollout state")

    metrics.set_rollout_source(broken)
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    families = scrape(registry)
    assert families["modelserve_rollout_stage"] == [] and families["modelserve_requests"][0].value == 1


def test_label_values_are_escaped_so_the_parser_reads_them_back(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    awkward = 'we"ird\\name\nx'
    metrics.record_flag_evaluation(awkward, "v2", "SPLIT")
    (sample,) = [s for s in scrape(registry)["modelserve_flag_evaluations"] if s.name.endswith("_total")]
    assert sample.labels["flag"] == awkward


def test_other_collectors_on_the_same_registry_are_exposed_beside_ours(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    class Extra:
        def describe(self) -> list[GaugeMetricFamily]:
            return []

        def collect(self) -> list[GaugeMetricFamily]:
            return [GaugeMetricFamily("app_queue_depth", "Queue depth", value=3)]

    registry.register(Extra())
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    families = scrape(registry)
    assert families["app_queue_depth"][0].value == 3 and "modelserve_requests" in families


@pytest.mark.anyio
async def test_metrics_app_serves_get_and_refuses_post(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    transport = httpx.ASGITransport(app=metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/metrics")
        head = await client.head("/metrics")
        refused = await client.post("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPE
    assert 'modelserve_requests_total{model="fraud"' in response.text
    assert head.status_code == 200 and head.content == b""
    assert refused.status_code == 405
