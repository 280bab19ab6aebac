"""Gate evaluation: verdicts, evidence, "no data" is never a pass, baselines of zero."""

from __future__ import annotations

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
from modelserve.telemetry.windows import WindowStats


def stats(requests: int, *, errors: int = 0, timeouts: int = 0, p95: float = 0.010) -> WindowStats:
    if requests == 0:
        return WindowStats.empty(60.0)
    return WindowStats(
        requests=requests,
        errors=errors,
        timeouts=timeouts,
        error_rate=errors / requests,
        timeout_rate=timeouts / requests,
        p50=p95 / 2,
        p95=p95,
        p99=p95 * 1.2,
        window_s=60.0,
    )


STAGE = default_plan().stages[0]  # shadow stage: every default gate, min_samples 200
CANARY = Stage(name="canary", weight=5, min_samples=100)


def verdicts(results: tuple) -> dict[str, str]:
    return {r.gate: r.verdict for r in results}


def test_no_data_makes_every_gate_inconclusive_never_pass() -> None:
    results = evaluate_gates(STAGE, stats(0), stats(0), agreement=None)
    assert set(verdicts(results).values()) == {INCONCLUSIVE}
    assert all(r.threshold is None or r.metric == "shadow_agreement" for r in results)


def test_too_few_candidate_samples_is_inconclusive_even_when_values_look_fine() -> None:
    results = evaluate_gates(STAGE, stats(199), stats(5000), agreement=ShadowAgreement(rate=1.0, samples=199))
    assert set(verdicts(results).values()) == {INCONCLUSIVE}
    assert results[0].detail == "candidate has 199 of 200 samples"


def test_healthy_candidate_passes_every_gate_with_evidence() -> None:
    results = evaluate_gates(
        STAGE, stats(400, p95=0.012), stats(4000, errors=4), agreement=ShadowAgreement(rate=0.97, samples=400)
    )
    assert set(verdicts(results).values()) == {PASS}
    p95 = next(r for r in results if r.gate == "p95_vs_baseline")
    assert (p95.observed, p95.baseline, p95.samples, p95.baseline_samples) == (0.012, 0.010, 400, 4000)
    assert p95.threshold == pytest.approx(0.015)
    assert p95.required_samples == 200


def test_relative_error_gate_with_a_zero_baseline_uses_the_floor_and_never_divides() -> None:
    gate = GateSpec(name="err", metric="error_rate", mode="relative", threshold=2.0, floor=0.01)
    ok = evaluate_gate(gate, CANARY, stats(200, errors=1), stats(2000))
    bad = evaluate_gate(gate, CANARY, stats(200, errors=10), stats(2000))
    assert (ok.verdict, ok.threshold, ok.baseline) == (PASS, 0.01, 0.0)
    assert (bad.verdict, bad.observed) == (FAIL, 0.05)
    both_zero = evaluate_gate(gate, CANARY, stats(200), stats(2000))
    assert both_zero.verdict == PASS


def test_relative_gate_without_a_floor_and_zero_baseline_fails_any_error() -> None:
    gate = GateSpec(name="err", metric="error_rate", mode="relative", threshold=2.0)
    assert evaluate_gate(gate, CANARY, stats(200, errors=1), stats(2000)).verdict == FAIL
    assert evaluate_gate(gate, CANARY, stats(200), stats(2000)).verdict == PASS


def test_relative_gate_needs_enough_baseline_samples() -> None:
    gate = GateSpec(name="p95", metric="p95", mode="relative", threshold=1.5)
    few = evaluate_gate(gate, CANARY, stats(200), stats(50))
    assert few.verdict == INCONCLUSIVE and few.detail == "baseline has 50 of 100 samples"
    assert evaluate_gate(gate, CANARY, stats(200), None).verdict == INCONCLUSIVE


@pytest.mark.parametrize(("factor", "verdict"), [(1.0, PASS), (1.4, PASS), (1.6, FAIL), (3.0, FAIL)])
def test_p95_gate_compares_against_one_and_a_half_times_the_baseline(factor: float, verdict: str) -> None:
    gate = GateSpec(name="p95", metric="p95", mode="relative", threshold=1.5)
    assert (
        evaluate_gate(gate, CANARY, stats(200, p95=0.02 * factor), stats(2000, p95=0.02)).verdict == verdict
    )


def test_absolute_gate_ignores_the_baseline() -> None:
    gate = GateSpec(name="p99", metric="p99", threshold=0.2)
    result = evaluate_gate(gate, CANARY, stats(200, p95=0.2), stats(0))
    assert (result.verdict, result.observed, result.threshold, result.baseline) == (FAIL, 0.24, 0.2, None)


def test_gate_min_samples_overrides_the_stage() -> None:
    gate = GateSpec(name="err", metric="error_rate", threshold=0.01, min_samples=1000)
    result = evaluate_gate(gate, CANARY, stats(500, errors=100), stats(0))
    assert (result.verdict, result.required_samples) == (INCONCLUSIVE, 1000)


def test_shadow_agreement_gate() -> None:
    gate = GateSpec(name="agree", metric="shadow_agreement", threshold=0.85)
    assert evaluate_gate(gate, CANARY, stats(0), None, ShadowAgreement(rate=0.9, samples=150)).verdict == PASS
    low = evaluate_gate(gate, CANARY, stats(0), None, ShadowAgreement(rate=0.8, samples=150))
    assert (low.verdict, low.observed, low.samples) == (FAIL, 0.8, 150)
    assert (
        evaluate_gate(gate, CANARY, stats(0), None, ShadowAgreement(rate=0.9, samples=10)).verdict
        == INCONCLUSIVE
    )
    assert (
        evaluate_gate(gate, CANARY, stats(0), None, ShadowAgreement(rate=None, samples=0)).verdict
        == INCONCLUSIVE
    )
    assert evaluate_gate(gate, CANARY, stats(0), None, None).verdict == INCONCLUSIVE


def test_experiment_gate_fails_only_when_significantly_worse() -> None:
    gate = experiment_gate()
    worse = ExperimentEvidence(significantly_worse=True, samples=500, detail="p=0.001")
    same = ExperimentEvidence(significantly_worse=False, samples=500)
    early = ExperimentEvidence(significantly_worse=True, samples=20)
    assert evaluate_gate(gate, CANARY, stats(0), None, experiment=worse).verdict == FAIL
    assert evaluate_gate(gate, CANARY, stats(0), None, experiment=same).verdict == PASS
    assert evaluate_gate(gate, CANARY, stats(0), None, experiment=early).verdict == INCONCLUSIVE
    assert evaluate_gate(gate, CANARY, stats(0), None).verdict == INCONCLUSIVE


def test_dry_run_is_carried_into_the_result_and_the_verdict_is_still_computed() -> None:
    gate = GateSpec(name="err", metric="error_rate", threshold=0.01, dry_run=True)
    result = evaluate_gate(gate, CANARY, stats(200, errors=20), stats(0))
    assert (result.verdict, result.dry_run) == (FAIL, True)
    assert result.to_dict()["dry_run"] is True
