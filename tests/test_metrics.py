from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from modelserve.telemetry import metrics as m
from modelserve.telemetry.metrics import LATENCY_BUCKETS_S, Metrics, RolloutReading


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Metrics:
    return Metrics(MeterProvider(metric_readers=[reader]))


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Instrument name -> its data points, from one collection."""
    data = reader.get_metrics_data()
    found: dict[str, list[Any]] = {}
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                found[metric.name] = list(metric.data.data_points)
    return found


def by_labels(data_points: list[Any]) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(dict(p.attributes).items())): p for p in data_points}


def test_requests_are_counted_per_version_role_and_reason(
    metrics: Metrics, reader: InMemoryMetricReader
) -> None:
    metrics.record_request("fraud", "1", "primary", "stable", 0.0004, False)
    metrics.record_request("fraud", "1", "primary", "stable", 0.0006, False)
    metrics.record_request("fraud", "2", "primary", "canary", 0.002, True)
    found = points(reader)
    stable = (("model", "fraud"), ("role", "primary"), ("route_reason", "stable"), ("version", "1"))
    canary = (("model", "fraud"), ("role", "primary"), ("route_reason", "canary"), ("version", "2"))
    requests = by_labels(found[m.REQUESTS])
    assert requests[stable].value == 2 and requests[canary].value == 1
    assert list(by_labels(found[m.ERRORS])) == [canary]
    durations = by_labels(found[m.REQUEST_DURATION])
    assert durations[stable].count == 2
    assert durations[stable].sum == pytest.approx(0.001)
    assert tuple(durations[stable].explicit_bounds) == LATENCY_BUCKETS_S


def test_shadow_outcomes_have_their_own_counters(metrics: Metrics, reader: InMemoryMetricReader) -> None:
    metrics.record_shadow_comparison("fraud", "2", "1", agree=True)
    metrics.record_shadow_comparison("fraud", "2", "1", agree=False)
    metrics.record_shadow_drop("fraud", "2", "1")
    metrics.record_shadow_timeout("fraud", "2", "1")
    metrics.record_shadow_error("fraud", "2", "1")
    metrics.record_shadow_error("fraud", "2", "1")
    found = points(reader)
    labels = {"model": "fraud", "version": "2", "primary_version": "1"}
    expected = {
        m.SHADOW_COMPARISONS: 2,
        m.SHADOW_AGREEMENTS: 1,
        m.SHADOW_DROPS: 1,
        m.SHADOW_TIMEOUTS: 1,
        m.SHADOW_ERRORS: 2,
    }
    for name, value in expected.items():
        (point,) = found[name]
        assert (dict(point.attributes), point.value) == (labels, value), name


def test_flag_evaluations_are_counted_by_variant_and_reason(
    metrics: Metrics, reader: InMemoryMetricReader
) -> None:
    for _ in range(3):
        metrics.record_flag_evaluation("fraud-version", "v2", "SPLIT")
    metrics.record_flag_evaluation("fraud-version", "v1", "TARGETING_MATCH")
    found = by_labels(points(reader)[m.FLAG_EVALUATIONS])
    assert found[(("flag", "fraud-version"), ("reason", "SPLIT"), ("variant", "v2"))].value == 3
    assert found[(("flag", "fraud-version"), ("reason", "TARGETING_MATCH"), ("variant", "v1"))].value == 1


def test_rollout_gauges_read_the_source_at_collection_time(
    metrics: Metrics, reader: InMemoryMetricReader
) -> None:
    readings = [
        RolloutReading(model="fraud", stage="canary-5", stage_index=1, canary_weight=0.05, candidate="2")
    ]
    metrics.set_rollout_source(lambda: readings)
    first = points(reader)
    readings[0] = RolloutReading(
        model="fraud", stage="canary-25", stage_index=2, canary_weight=0.25, candidate="2"
    )
    second = points(reader)
    assert [(dict(p.attributes)["stage"], p.value) for p in first[m.ROLLOUT_STAGE]] == [("canary-5", 1)]
    assert [(dict(p.attributes)["stage"], p.value) for p in second[m.ROLLOUT_STAGE]] == [("canary-25", 2)]
    (weight,) = second[m.CANARY_WEIGHT]
    assert weight.value == 0.25 and dict(weight.attributes) == {"model": "fraud", "candidate": "2"}


def test_failing_rollout_source_does_not_break_collection(
    metrics: Metrics, reader: InMemoryMetricReader, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[RolloutReading]:
        raise RuntimeError("state unavailable")

    metrics.set_rollout_source(broken)
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    with caplog.at_level(logging.ERROR, logger="modelserve.telemetry.metrics"):
        found = points(reader)
    assert found[m.REQUESTS][0].value == 1
    assert m.ROLLOUT_STAGE not in found or found[m.ROLLOUT_STAGE] == []
    assert "rollout gauge source failed" in caplog.text


def test_metrics_on_a_noop_provider_record_nothing_and_raise_nothing() -> None:
    metrics = Metrics(otel_metrics.NoOpMeterProvider())
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, True)
    metrics.record_shadow_comparison("fraud", "2", "1", agree=True)


def test_label_tuples_past_the_cache_bound_are_still_recorded(
    metrics: Metrics, reader: InMemoryMetricReader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(m, "MAX_CACHED_LABEL_SETS", 2)
    for version in ("1", "2", "3", "4"):
        metrics.record_request("fraud", version, "primary", "stable", 0.001, False)
    versions = sorted(dict(p.attributes)["version"] for p in points(reader)[m.REQUESTS])
    assert versions == ["1", "2", "3", "4"]
