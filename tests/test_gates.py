"""Gate evaluation: statistical verdicts with evidence, practical floors, "no data" never decides."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from modelserve.rollout.gates import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    ExperimentEvidence,
    ShadowAgreement,
    evaluate_gate,
    evaluate_gates,
)
from modelserve.rollout.plan import GateSpec, Stage, default_plan, experiment_gate
from modelserve.rollout.sample import Sample
from modelserve.telemetry.windows import LatencyHistogram

#: The default shadow stage (every default gate) with 200 samples: the rules are under test here,
#: not the plan's sample sizes.
STAGE = dataclasses.replace(default_plan().stages[0], min_samples=200)
CANARY = Stage(name="canary", weight=5, min_samples=100)
ERRORS = GateSpec(name="errors", metric="error_rate", mode="relative", threshold=2.0, floor=0.005)
P95 = GateSpec(name="p95", metric="p95", mode="relative", threshold=1.5, floor=0.00025)


def sample(
    requests: int, *, errors: int = 0, timeouts: int = 0, median_s: float = 0.002, seed: int = 0
) -> Sample:
    """`requests` log-normal latencies around `median_s` (the same seed gives the same values)."""
    histogram = LatencyHistogram()
    for value in median_s * np.exp(0.4 * np.random.default_rng(seed).standard_normal(requests)):
        histogram.add(float(value))
    return Sample(requests=requests, errors=errors, timeouts=timeouts, latency=histogram)


def verdicts(results: tuple) -> dict[str, str]:
    return {r.gate: r.verdict for r in results}


def one(gate: GateSpec, candidate: Sample, baseline: Sample | None, stage: Stage = CANARY):
    return evaluate_gate(gate, stage, candidate, baseline)


def test_no_data_makes_every_gate_inconclusive_never_pass() -> None:
    results = evaluate_gates(STAGE, Sample(requests=0), Sample(requests=0), agreement=None)
    assert set(verdicts(results).values()) == {INCONCLUSIVE}


def test_too_few_candidate_samples_is_inconclusive_even_when_values_look_fine() -> None:
    results = evaluate_gates(
        STAGE, sample(199), sample(5000, seed=1), agreement=ShadowAgreement(rate=1.0, samples=199)
    )
    assert set(verdicts(results).values()) == {INCONCLUSIVE}
    assert results[0].detail.startswith("candidate has 199 of 200 samples")


def test_healthy_candidate_passes_every_gate_and_every_verdict_carries_its_numbers() -> None:
    results = evaluate_gates(
        STAGE, sample(400, errors=1), sample(4000, errors=20, seed=1),
        agreement=ShadowAgreement(rate=0.97, samples=400, agreeing=388),
    )  # fmt: skip
    assert set(verdicts(results).values()) == {PASS}
    for result in results:
        assert result.observed is not None and result.threshold is not None
        assert result.interval is not None and result.interval[0] <= result.observed <= result.interval[1]
        assert result.samples == 400 and result.confidence == 0.95
    errors = results[0]
    assert errors.baseline == pytest.approx(0.005) and errors.baseline_samples == 4000
    assert errors.difference is not None and errors.difference_interval is not None


def test_a_clear_error_regression_fails_with_the_difference_interval_above_the_margin() -> None:
    result = one(ERRORS, sample(2000, errors=50), sample(20000, errors=100, seed=1))
    assert result.verdict == FAIL
    assert result.difference_interval is not None and result.difference_interval[0] > 0.005
    assert "worse beyond doubt" in result.detail


def test_an_error_regression_not_yet_beyond_doubt_holds_rather_than_passes() -> None:
    result = one(ERRORS, sample(200, errors=6), sample(4000, errors=20, seed=1))
    assert result.verdict == INCONCLUSIVE
    assert "not yet beyond doubt" in result.detail


def test_one_error_in_a_small_sample_is_noise_not_a_regression() -> None:
    assert one(ERRORS, sample(150, errors=1), sample(3000, errors=15, seed=1)).verdict == PASS


def test_relative_rate_gate_with_a_zero_baseline_allows_the_floor_and_never_divides() -> None:
    assert one(ERRORS, sample(1000, errors=4), sample(1000, seed=1)).verdict == PASS
    failing = one(ERRORS, sample(5000, errors=200), sample(5000, seed=1))
    assert failing.verdict == FAIL and failing.baseline == 0.0 and failing.threshold == pytest.approx(0.005)


def test_relative_gate_needs_enough_baseline_samples() -> None:
    result = one(ERRORS, sample(500), sample(50, seed=1))
    assert result.verdict == INCONCLUSIVE and result.detail == "baseline has 50 of 100 samples"


def test_p95_twice_as_slow_fails_and_the_same_distribution_passes() -> None:
    baseline = sample(4000, seed=1)
    slow = one(P95, sample(1000, median_s=0.004), baseline)
    assert slow.verdict == FAIL
    assert slow.interval is not None and slow.baseline_interval is not None
    assert slow.interval[0] > 1.5 * slow.baseline_interval[1]
    assert one(P95, sample(1000), baseline).verdict == PASS


def test_a_quantile_with_too_few_values_beyond_it_is_inconclusive() -> None:
    stage = Stage(name="tiny", weight=5, min_samples=20)
    result = one(P95, sample(99, median_s=0.02), sample(4000, seed=1), stage)
    assert result.verdict == INCONCLUSIVE
    assert result.required_samples == 100 and result.detail == "candidate has 99 of 100 samples"


def test_the_latency_floor_ignores_a_doubling_of_a_microsecond_model() -> None:
    # 30 µs -> 60 µs: far beyond 1.5x, but within the quarter-millisecond practical floor.
    result = one(P95, sample(2000, median_s=60e-6), sample(4000, median_s=30e-6, seed=1))
    assert result.verdict == PASS
    assert result.threshold == pytest.approx(result.baseline + 0.00025)


def test_absolute_gate_ignores_the_baseline() -> None:
    gate = GateSpec(name="p95_abs", metric="p95", mode="absolute", threshold=0.010)
    assert one(gate, sample(500), None).verdict == PASS
    assert one(gate, sample(500, median_s=0.05), None).verdict == FAIL


def test_a_baseline_from_another_time_does_not_act_on_latency() -> None:
    results = evaluate_gates(
        Stage(name="full", weight=100, min_samples=100, gates=(P95, ERRORS)),
        sample(1000, median_s=0.004), sample(4000, seed=1), concurrent=False,
    )  # fmt: skip
    assert verdicts(results) == {"p95": PASS, "errors": PASS}
    assert "measured at another time" in results[0].detail


def test_gate_min_samples_overrides_the_stage() -> None:
    gate = GateSpec(name="errors", metric="error_rate", mode="absolute", threshold=0.01, min_samples=10)
    assert one(gate, sample(10), None).verdict == PASS


@pytest.mark.parametrize(
    ("agreeing", "samples", "verdict"),
    [(860, 1000, PASS), (140, 200, FAIL), (166, 200, PASS), (160, 200, INCONCLUSIVE), (10, 10, INCONCLUSIVE)],
)
def test_shadow_agreement_is_judged_by_its_interval_against_the_threshold(
    agreeing: int, samples: int, verdict: str
) -> None:
    gate = GateSpec(name="agreement", metric="shadow_agreement", threshold=0.85)
    result = evaluate_gate(
        gate, STAGE, Sample(requests=0), None,
        ShadowAgreement(rate=agreeing / samples, samples=samples, agreeing=agreeing),
    )  # fmt: skip
    assert result.verdict == verdict
    if samples >= 200:
        assert result.interval is not None and result.interval[0] < agreeing / samples < result.interval[1]


def test_experiment_gate_fails_only_when_significantly_worse() -> None:
    stage = Stage(name="s", weight=5, min_samples=100, gates=(experiment_gate(),))
    worse = ExperimentEvidence(significantly_worse=True, samples=500, detail="p=0.001")
    fine = ExperimentEvidence(significantly_worse=False, samples=500)
    assert evaluate_gates(stage, sample(500), None, experiment=worse)[0].verdict == FAIL
    assert evaluate_gates(stage, sample(500), None, experiment=fine)[0].verdict == PASS
    assert evaluate_gates(stage, sample(500), None)[0].verdict == INCONCLUSIVE


def test_dry_run_is_carried_into_the_result_and_the_verdict_is_still_computed() -> None:
    gate = GateSpec(name="errors", metric="error_rate", mode="absolute", threshold=0.01, dry_run=True)
    result = one(gate, sample(5000, errors=500), None)
    assert result.verdict == FAIL and result.dry_run


def test_a_failure_beyond_doubt_counts_before_the_stage_minimum_a_pass_does_not() -> None:
    shadow = default_plan().stages[0]  # 1,000 comparisons to pass
    agreement = next(g for g in shadow.gates if g.metric == "shadow_agreement")
    baseline = sample(3000, errors=15, seed=1)
    bad = evaluate_gate(ERRORS, shadow, sample(300, errors=30), baseline)
    assert bad.verdict == FAIL and bad.samples == 300 and bad.required_samples == 1000
    fine = evaluate_gate(ERRORS, shadow, sample(300, errors=1), baseline)
    assert fine.verdict == INCONCLUSIVE and fine.detail.startswith("candidate has 300 of 1000 samples")
    assert fine.observed is not None and fine.difference_interval is not None  # the numbers so far
    too_few = evaluate_gate(ERRORS, shadow, sample(99, errors=99), baseline)
    assert too_few.verdict == INCONCLUSIVE and too_few.observed is None
    wrong = ShadowAgreement(rate=0.5, samples=300, agreeing=150)
    assert evaluate_gate(agreement, shadow, sample(300), baseline, wrong).verdict == FAIL
    right = ShadowAgreement(rate=0.97, samples=300, agreeing=291)
    assert evaluate_gate(agreement, shadow, sample(300), baseline, right).verdict == INCONCLUSIVE
