"""`report()`: verdicts from always-valid p-values, SRM refusal, Holm over arms and segments, rendering."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from modelserve.experiments.bandits import ThompsonSampling
from modelserve.experiments.experiment import (
    ExperimentCounters,
    ExperimentSpec,
    MetricCounter,
    parse_experiment_spec,
)
from modelserve.experiments.report import VERDICTS, report
from modelserve.experiments.stats import holm_adjust, z_test_proportions


def _spec(arms: int = 2, **changes: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "model": "fraud",
        "arms": [str(i + 1) for i in range(arms)],
        "metric": {"name": "conversion", "kind": "binary"},
        "mde": 0.05,
    }
    data.update(changes)
    return parse_experiment_spec(data)


def _binary(n: int, successes: int) -> MetricCounter:
    return MetricCounter(n=n, total=float(successes), total_sq=float(successes))


def _counters(spec: ExperimentSpec, arms: dict[str, tuple[int, int, int]]) -> ExperimentCounters:
    """arm -> (assigned, outcomes, successes)."""
    counters = ExperimentCounters(spec)
    for arm, (assigned, n, successes) in arms.items():
        counters.arms[arm].assigned = assigned
        counters.arms[arm].metric = _binary(n, successes)
    return counters


def test_clear_winner_is_b_better_with_both_p_values_shown() -> None:
    spec = _spec()
    result = report(spec, _counters(spec, {"1": (20_000, 20_000, 2_000), "2": (20_000, 20_000, 2_400)}))
    assert result.verdict == "B better" and result.winner == "2"
    (comparison,) = result.comparisons
    assert comparison.p_value == pytest.approx(z_test_proportions(2_000, 20_000, 2_400, 20_000).p_value)
    assert comparison.always_valid_p < 0.05 and comparison.always_valid_p >= comparison.p_value
    assert comparison.lift.relative == pytest.approx(0.2)
    assert result.srm is not None and not result.srm.flagged


def test_worse_treatment_is_a_better() -> None:
    spec = _spec()
    result = report(spec, _counters(spec, {"1": (20_000, 20_000, 2_400), "2": (20_000, 20_000, 2_000)}))
    assert result.verdict == "A better" and result.winner == "1"


def test_tight_interval_inside_the_mde_is_equivalent() -> None:
    spec = _spec()
    counts = {"1": (1_000_000, 1_000_000, 100_000), "2": (1_000_000, 1_000_000, 100_100)}
    assert report(spec, _counters(spec, counts)).verdict == "equivalent within MDE"


def test_small_sample_is_inconclusive_and_says_how_many_more_are_needed() -> None:
    spec = _spec(mde=0.2)
    result = report(spec, _counters(spec, {"1": (1_000, 1_000, 100), "2": (1_000, 1_000, 110)}))
    assert result.verdict == "inconclusive"
    assert result.samples_needed is not None and 3_000 < result.samples_needed < 10_000
    assert "need about" in result.render_table()


def test_skewed_assignment_is_invalid_srm_and_names_no_winner() -> None:
    spec = _spec()
    result = report(spec, _counters(spec, {"1": (10_300, 10_300, 1_000), "2": (9_700, 9_700, 1_500)}))
    assert result.srm is not None and result.srm.flagged
    assert result.verdict == "invalid (SRM)" and result.winner is None
    assert all(c.verdict == "invalid (SRM)" for c in result.comparisons)
    assert "MISMATCH" in result.render_table()


def test_three_arms_are_each_compared_with_control_under_holm() -> None:
    spec = _spec(arms=3)
    counts = {"1": (30_000, 30_000, 3_000), "2": (30_000, 30_000, 3_120), "3": (30_000, 30_000, 3_500)}
    result = report(spec, _counters(spec, counts))
    raw = [c.p_value for c in result.comparisons]
    assert [c.p_adjusted for c in result.comparisons] == pytest.approx(holm_adjust(raw))
    seq = [c.always_valid_p for c in result.comparisons]
    assert [c.always_valid_p_adjusted for c in result.comparisons] == pytest.approx(holm_adjust(seq))
    assert result.verdict == "B better" and result.winner == "3"
    assert all(c.verdict in VERDICTS for c in result.comparisons)


def test_lower_is_better_continuous_metric() -> None:
    spec = _spec(metric={"name": "error", "kind": "continuous", "higher_is_better": False})
    rng = np.random.default_rng(0)
    counters = ExperimentCounters(spec)
    for arm, mean in (("1", 10.0), ("2", 9.0)):
        counters.arms[arm].assigned = 5_000
        for value in rng.normal(mean, 3.0, size=5_000):
            counters.arms[arm].metric.add(float(value))
    result = report(spec, counters)
    assert result.verdict == "B better"
    assert result.comparisons[0].lift.absolute == pytest.approx(-1.0, abs=0.2)


def test_segments_are_holm_adjusted_within_each_attribute() -> None:
    spec = _spec(segments=["country"])
    counters = _counters(spec, {"1": (8_000, 8_000, 800), "2": (8_000, 8_000, 880)})
    for arm, split in (("1", [(4_000, 380), (4_000, 420)]), ("2", [(4_000, 500), (4_000, 380)])):
        counters.arms[arm].segments["country"] = {
            c: _binary(n, s) for c, (n, s) in zip(("de", "fr"), split, strict=True)
        }
    result = report(spec, counters)
    assert [(s.value, s.comparison.arm) for s in result.segments] == [("de", "2"), ("fr", "2")]
    raw = [s.comparison.p_value for s in result.segments]
    assert [s.comparison.p_adjusted for s in result.segments] == pytest.approx(holm_adjust(raw))
    assert "segments (Holm" in result.render_table()


def test_harmed_guardrail_is_flagged() -> None:
    spec = _spec(guardrails=[{"name": "latency_ms", "kind": "continuous", "higher_is_better": False}])
    counters = _counters(spec, {"1": (5_000, 5_000, 500), "2": (5_000, 5_000, 500)})
    rng = np.random.default_rng(1)
    for arm, mean in (("1", 20.0), ("2", 30.0)):
        guardrail = counters.arms[arm].guardrails.setdefault("latency_ms", MetricCounter())
        for value in rng.normal(mean, 5.0, size=2_000):
            guardrail.add(float(value))
    result = report(spec, counters)
    assert [g.harmed for g in result.guardrails] == [True]
    assert "HARMED" in result.render_table()


def test_bandit_report_skips_srm_and_shows_the_posterior() -> None:
    spec = _spec(policy="thompson")
    bandit = ThompsonSampling(spec.versions, rng=np.random.default_rng(0))
    counters = _counters(spec, {"1": (9_000, 900, 90), "2": (1_000, 100, 10)})  # skewed on purpose
    result = report(spec, counters, bandit=bandit)
    assert result.srm is None and result.verdict != "invalid (SRM)"
    assert len(result.posterior) == 2
    table = result.render_table()
    assert "not applicable" in table and "bandit posterior" in table


def test_empty_experiment_reports_inconclusive_and_serialises_without_nan() -> None:
    spec = _spec(guardrails=[{"name": "latency", "kind": "continuous"}], segments=["country"])
    result = report(spec, ExperimentCounters(spec))
    assert result.verdict == "inconclusive" and result.samples_needed is None
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["arms"][0]["estimate"] is None and data["verdict"] == "inconclusive"
    assert "fraud" in result.render_table()


def test_table_lists_every_arm_and_the_verdict() -> None:
    spec = _spec()
    table = report(
        spec, _counters(spec, {"1": (20_000, 20_000, 2_000), "2": (20_000, 20_000, 2_400)})
    ).render_table()
    assert "1 (control)" in table and "12.00%" in table and "verdict: B better: 2" in table
    assert "p (seq)" in table
