"""The monitoring collector's exposition parses with prometheus_client and carries per-version series."""

from __future__ import annotations

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelserve.monitoring.collector import MonitoringCollector
from modelserve.monitoring.counters import EventCounters
from modelserve.monitoring.drift import DriftConfig
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import OutcomeTally


def exposition() -> dict[str, list[tuple[str, dict[str, str], float]]]:
    config = MonitorConfig(drift=DriftConfig(min_samples=50, reference_rows=100, reference_period_s=0))
    monitor = Monitor(config_for=lambda model: config)
    rng = np.random.default_rng(0)
    for i in range(400):
        if i == 200:
            monitor.flush()  # the first 100 rows per version are the reference, the rest the window
        p = rng.random((1, 1))
        monitor.submit(
            "credit",
            "1" if i % 2 else "2",
            {"input": rng.normal(size=(1, 2))},
            {"label": (p[:, 0] > 0.5).astype(np.int64), "probabilities": np.column_stack([1 - p, p])},
        )
    tally = OutcomeTally()
    tally.record_labels("credit", "1", 7, 10, experiment=False)
    counters = EventCounters()
    counters.rollout_event("credit", "started")
    counters.rollout_event("credit", "rolled_back")
    counters.rollout_event("credit", "gates")  # not an alerting event: not counted
    counters.count(EventCounters.GUARDRAILS, "credit", "rollback")
    registry = CollectorRegistry()
    registry.register(
        MonitoringCollector(monitor, tally, counters, shift_pairs=lambda: [("credit", "1", "2")])
    )
    text = generate_latest(registry).decode()
    samples: dict[str, list[tuple[str, dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.name, sample.labels, sample.value))
    return samples


def test_prediction_distribution_series_per_version_parse() -> None:
    samples = exposition()
    buckets = samples["modelserve_prediction_value_bucket"]
    versions = {labels["version"] for _, labels, _ in buckets}
    assert versions == {"1", "2"}
    inf = [v for _, labels, v in buckets if labels["le"] == "+Inf" and labels["output"] == "probabilities[1]"]
    assert sorted(inf) == [200.0, 200.0]  # every row, reference rows included
    classes = samples["modelserve_prediction_class_total"]
    assert sum(v for _, labels, v in classes if labels["version"] == "1") == 200


def test_drift_outcome_and_event_series() -> None:
    samples = exposition()
    psi = samples["modelserve_drift_psi"]
    assert {labels["column"] for _, labels, _ in psi} >= {"input[0]", "input[1]"}
    assert all(labels["kind"] in ("input", "output") for _, labels, _ in psi)
    assert "modelserve_drift_alarm" in samples and "modelserve_output_shift_psi" in samples
    assert [(labels["result"], v) for _, labels, v in samples["modelserve_outcomes_total"]] == [
        ("right", 7.0),
        ("wrong", 3.0),
    ]
    assert samples["modelserve_accuracy_ratio"][0][2] == 0.7
    rollouts = {labels["outcome"]: v for _, labels, v in samples["modelserve_rollouts_total"]}
    assert rollouts == {"started": 1.0, "rolled_back": 1.0}
    assert samples["modelserve_guardrail_actions_total"][0][1] == {"model": "credit", "action": "rollback"}
    assert samples["modelserve_monitoring_dropped_total"][0][2] == 0.0
