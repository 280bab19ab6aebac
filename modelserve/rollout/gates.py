"""Gate evaluation: pure functions from a stage and what each version did to a verdict per gate.

This is the one rule engine: the rollout controller, `rollout status`, the shadow report's
recommendation and the guardrails all decide through `evaluate_gates`.

Verdicts are `pass`, `fail` or `inconclusive`, decided with confidence sequences
(`modelserve.rollout.confidence`), which stay valid however often a gate is looked at:

| gate | fails when (beyond doubt at the gate's confidence) | passes when (plausibly) |
|---|---|---|
| rate, relative | candidate - baseline > margin | excess <= margin |
| rate, absolute | candidate rate > threshold | rate <= threshold |
| quantile, relative | candidate quantile > limit(baseline's upper bound) | q <= limit(baseline q) |
| quantile, absolute | candidate quantile > threshold | q <= threshold |
| agreement | agreement rate < threshold | rate >= threshold |
| experiment | the experiment finds the candidate significantly worse | it does not |
| accuracy, relative | live accuracy - candidate accuracy > drop | shortfall <= drop |
| accuracy, absolute | candidate accuracy < threshold | accuracy >= threshold |

with margin = max((threshold - 1) x baseline rate, floor), limit(b) = max(threshold x b, b + floor)
and drop = max((1 - threshold) x live accuracy, floor). Accuracy is over the rows labelled since the
rollout began (`OutcomeEvidence`: labels posted back by request id, joined to what each version
predicted; in a shadow stage both versions predicted the same rows).

"Plausibly" means within one standard error of the estimate: a gate passes unless the candidate
looks worse by more than its noise (one error in 150 requests is not "worse than 0.5 %").
Anything between (looks worse, not yet beyond doubt) is inconclusive: the stage holds and
collects more data. So is too little data: a gate passes only with the samples it needs
(`min_samples`, else the stage's; a relative gate's baseline too), which is what gives a stage the
power to have seen a regression. In a shadow stage a gate may *fail* earlier, from 100 samples: a
confidence sequence is valid at any sample size (few samples only widen it), so a candidate already
worse beyond doubt is not kept in shadow until the stage's minimum. A quantile never gives a
verdict with fewer than five values expected beyond it (100 for p95, 500 for p99). "No data" never
passes and never fails.
Every result carries the numbers: estimate and interval of the candidate, of the baseline and of
the difference, the effective limit, sample counts and confidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from modelserve.rollout.confidence import (
    Bounds,
    min_samples_for_quantile,
    quantile_interval,
    quantile_one_sigma_low,
    rate_difference_interval,
    rate_interval,
    rate_sd,
)
from modelserve.rollout.plan import GateSpec, Stage
from modelserve.rollout.sample import Sample

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"

QUANTILES = {"p50": 0.50, "p95": 0.95, "p99": 0.99}
#: Mixing scale of an agreement sequence: resolves agreement differences of a few points.
AGREEMENT_TAU = 0.05
#: Samples a rate or agreement gate needs before it may fail, when its stage needs more to pass.
FAIL_MIN_SAMPLES = 100


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowAgreement:
    """How often the candidate's shadow results agreed with the primary's: `agreeing` of `samples`
    compared rows (`rate` alone, without `agreeing`, is read as rate x samples)."""

    rate: float | None
    samples: int
    agreeing: int | None = None

    @property
    def successes(self) -> int:
        if self.agreeing is not None:
            return self.agreeing
        return round((self.rate or 0.0) * self.samples)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentEvidence:
    """Input of the "not significantly worse" gate (filled in from the running experiment's report)."""

    significantly_worse: bool
    samples: int
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeEvidence:
    """Input of accuracy gates: labelled rows each version predicted right, since the rollout began."""

    correct: int
    samples: int
    baseline_correct: int
    baseline_samples: int


@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    """One gate's verdict with its evidence; `threshold` is the effective limit in the metric's unit."""

    gate: str
    metric: str
    verdict: str
    observed: float | None
    threshold: float | None
    baseline: float | None
    samples: int
    baseline_samples: int | None
    required_samples: int
    dry_run: bool
    detail: str
    interval: list[float | None] | None = None
    baseline_interval: list[float | None] | None = None
    difference: float | None = None
    difference_interval: list[float | None] | None = None
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by events, webhooks and the admin API."""
        return {
            "gate": self.gate,
            "metric": self.metric,
            "verdict": self.verdict,
            "observed": self.observed,
            "interval": self.interval,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "baseline_interval": self.baseline_interval,
            "difference": self.difference,
            "difference_interval": self.difference_interval,
            "samples": self.samples,
            "baseline_samples": self.baseline_samples,
            "required_samples": self.required_samples,
            "confidence": self.confidence,
            "dry_run": self.dry_run,
            "detail": self.detail,
        }


def evaluate_gates(
    stage: Stage,
    candidate: Sample,
    baseline: Sample | None,
    *,
    agreement: ShadowAgreement | None = None,
    experiment: ExperimentEvidence | None = None,
    concurrent: bool = True,
    outcomes: OutcomeEvidence | None = None,
) -> tuple[GateResult, ...]:
    """Evaluate every gate of `stage`; the result order follows `stage.gates`.

    `concurrent=False` says the baseline was measured at another time (a 100 % stage has no live
    traffic to compare with): relative latency gates then report their numbers and pass, because
    latency across time measures the host's load as much as the model, and it was compared
    side by side at every earlier stage. Rate gates still compare.
    """
    return tuple(
        evaluate_gate(
            g, stage, candidate, baseline, agreement, experiment, concurrent=concurrent, outcomes=outcomes
        )
        for g in stage.gates
    )


def evaluate_gate(
    gate: GateSpec,
    stage: Stage,
    candidate: Sample,
    baseline: Sample | None,
    agreement: ShadowAgreement | None = None,
    experiment: ExperimentEvidence | None = None,
    *,
    concurrent: bool = True,
    outcomes: OutcomeEvidence | None = None,
) -> GateResult:
    """Evaluate one gate (see the module docstring and `evaluate_gates` for the rules)."""
    required = gate.min_samples or stage.min_samples
    if gate.metric == "shadow_agreement":
        return _agreement(gate, required, agreement, stage)
    if gate.metric == "accuracy":
        return _accuracy(gate, required, outcomes)
    if gate.metric == "experiment":
        return _experiment(gate, required, experiment)
    if gate.metric in QUANTILES:
        required = max(required, min_samples_for_quantile(QUANTILES[gate.metric]))
    relative = gate.mode == "relative"
    base_samples = baseline.requests if baseline is not None else 0
    common: dict[str, Any] = {
        "gate": gate.name,
        "metric": gate.metric,
        "samples": candidate.requests,
        "baseline_samples": base_samples if relative else None,
        "required_samples": required,
        "dry_run": gate.dry_run,
        "confidence": gate.confidence,
    }
    shortfall = ""
    if candidate.requests < required:
        shortfall = f"candidate has {candidate.requests} of {required} samples"
    elif relative and (baseline is None or base_samples < required):
        shortfall = f"baseline has {base_samples} of {required} samples"
    if shortfall:
        to_fail = _samples_to_fail(gate, required, stage)
        if candidate.requests < to_fail or (relative and (baseline is None or base_samples < to_fail)):
            return GateResult(
                verdict=INCONCLUSIVE, observed=None, threshold=None, baseline=None, detail=shortfall,
                **common,
            )  # fmt: skip
    result = _judge(gate, candidate, baseline, concurrent=concurrent, common=common)
    if shortfall and result.verdict != FAIL:  # too few samples to pass: only a failure counts yet
        return replace(result, verdict=INCONCLUSIVE, detail=f"{shortfall}; {result.detail}")
    return result


def _judge(
    gate: GateSpec, candidate: Sample, baseline: Sample | None, *, concurrent: bool, common: dict[str, Any]
) -> GateResult:
    relative = gate.mode == "relative"
    alpha = 1.0 - gate.confidence
    if gate.metric in QUANTILES:
        result = _quantile(gate, QUANTILES[gate.metric], candidate, baseline, alpha, common)
        if relative and not concurrent and result.verdict != PASS:
            return replace(
                result, verdict=PASS,
                detail=f"{result.detail}; not acted on: the baseline was measured at another time",
            )  # fmt: skip
        return result
    return _rate(gate, candidate, baseline, alpha, common)


def _rate(
    gate: GateSpec, candidate: Sample, baseline: Sample | None, alpha: float, common: dict[str, Any]
) -> GateResult:
    events, n = candidate.rate(gate.metric)
    if gate.mode == "absolute":
        bounds = rate_interval(events, n, alpha=alpha, tau=_rate_tau(gate.threshold))
        rate = bounds.estimate or 0.0
        plausible = rate - rate_sd(events, n)
        verdict = _decide(fails=(bounds.low or 0.0) > gate.threshold, passes=plausible <= gate.threshold)
        detail = f"{gate.metric} {rate:.4g} {_interval(bounds)} vs limit {gate.threshold:.4g}"
        return GateResult(
            verdict=verdict, observed=rate, interval=bounds.as_list(), threshold=gate.threshold,
            baseline=None, detail=_explain(verdict, detail), **common,
        )  # fmt: skip
    assert baseline is not None
    base_events, base_n = baseline.rate(gate.metric)
    base_rate = base_events / base_n
    margin = max((gate.threshold - 1.0) * base_rate, gate.floor)
    difference = rate_difference_interval(events, n, base_events, base_n, alpha=alpha, tau=_rate_tau(margin))
    excess = difference.estimate or 0.0
    plausible = excess - math.hypot(rate_sd(events, n), rate_sd(base_events, base_n))
    verdict = _decide(fails=(difference.low or 0.0) > margin, passes=plausible <= margin)
    limit = base_rate + margin
    detail = (
        f"{gate.metric} {events / n:.4g} vs baseline {base_rate:.4g}: excess {excess:+.4g} "
        f"{_interval(difference)} vs margin {margin:.4g} (max({gate.threshold:g}x-1 of baseline, "
        f"floor {gate.floor:g}))"
    )
    return GateResult(
        verdict=verdict, observed=events / n,
        interval=rate_interval(events, n, alpha=alpha, tau=_rate_tau(margin)).as_list(), threshold=limit,
        baseline=base_rate,
        baseline_interval=rate_interval(base_events, base_n, alpha=alpha, tau=_rate_tau(margin)).as_list(),
        difference=excess, difference_interval=difference.as_list(), detail=_explain(verdict, detail),
        **common,
    )  # fmt: skip


def _quantile(
    gate: GateSpec,
    q: float,
    candidate: Sample,
    baseline: Sample | None,
    alpha: float,
    common: dict[str, Any],
) -> GateResult:
    mine = quantile_interval(candidate.latency, q, alpha=alpha)
    value = mine.estimate
    if value is None:  # requests that never produced a latency (every one failed)
        return GateResult(
            verdict=INCONCLUSIVE, observed=None, threshold=None, baseline=None,
            detail="the candidate has no latencies yet", **common,
        )  # fmt: skip
    if gate.mode == "absolute":
        plausible = quantile_one_sigma_low(candidate.latency, q) or 0.0
        verdict = _decide(fails=(mine.low or 0.0) > gate.threshold, passes=plausible <= gate.threshold)
        detail = f"{gate.metric} {value:.4g} s {_interval(mine)} vs limit {gate.threshold:.4g} s"
        return GateResult(
            verdict=verdict, observed=value, interval=mine.as_list(), threshold=gate.threshold,
            baseline=None, detail=_explain(verdict, detail), **common,
        )  # fmt: skip
    assert baseline is not None
    theirs = quantile_interval(baseline.latency, q, alpha=alpha)
    if theirs.estimate is None:
        return GateResult(
            verdict=INCONCLUSIVE, observed=value, threshold=None, baseline=None,
            detail="the baseline has no latencies yet", **common,
        )  # fmt: skip

    def limit(base: float) -> float:
        return max(gate.threshold * base, base + gate.floor)

    proven = theirs.high is not None and (mine.low or 0.0) > limit(theirs.high)
    threshold = limit(theirs.estimate)
    plausible = quantile_one_sigma_low(candidate.latency, q) or 0.0
    verdict = _decide(fails=proven, passes=plausible <= threshold)
    detail = (
        f"{gate.metric} {value:.4g} s {_interval(mine)} vs baseline {theirs.estimate:.4g} s "
        f"{_interval(theirs)}: limit max({gate.threshold:g}x, +{gate.floor:g} s) = {threshold:.4g} s"
    )
    return GateResult(
        verdict=verdict, observed=value, interval=mine.as_list(), threshold=threshold,
        baseline=theirs.estimate, baseline_interval=theirs.as_list(), difference=value - theirs.estimate,
        detail=_explain(verdict, detail), **common,
    )  # fmt: skip


def _agreement(gate: GateSpec, required: int, agreement: ShadowAgreement | None, stage: Stage) -> GateResult:
    samples = agreement.samples if agreement is not None else 0
    common: dict[str, Any] = {
        "gate": gate.name, "metric": gate.metric, "threshold": gate.threshold, "baseline": None,
        "samples": samples, "baseline_samples": None, "required_samples": required,
        "dry_run": gate.dry_run, "confidence": gate.confidence,
    }  # fmt: skip
    shortfall = f"{samples} of {required} shadow comparisons"
    if agreement is None or samples < _samples_to_fail(gate, required, stage) or samples == 0:
        return GateResult(
            verdict=INCONCLUSIVE, observed=None if agreement is None else agreement.rate,
            detail=shortfall, **common,
        )  # fmt: skip
    bounds = rate_interval(agreement.successes, samples, alpha=1.0 - gate.confidence, tau=AGREEMENT_TAU)
    rate = bounds.estimate or 0.0
    plausible = rate + rate_sd(agreement.successes, samples)
    verdict = _decide(fails=(bounds.high or 1.0) < gate.threshold, passes=plausible >= gate.threshold)
    detail = f"agreement {rate:.4f} {_interval(bounds)} vs minimum {gate.threshold:g}"
    if samples < required and verdict != FAIL:  # too few comparisons to pass: only a failure counts yet
        verdict, detail = INCONCLUSIVE, f"{shortfall}; {detail}"
    return GateResult(
        verdict=verdict, observed=rate, interval=bounds.as_list(), detail=_explain(verdict, detail), **common
    )


def _experiment(gate: GateSpec, required: int, experiment: ExperimentEvidence | None) -> GateResult:
    samples = experiment.samples if experiment is not None else 0
    if experiment is None or samples < required:
        verdict, detail = INCONCLUSIVE, f"{samples} of {required} experiment outcomes"
    else:
        verdict = FAIL if experiment.significantly_worse else PASS
        detail = experiment.detail or (
            "significantly worse" if verdict == FAIL else "not significantly worse"
        )
    return GateResult(
        gate=gate.name, metric=gate.metric, verdict=verdict, observed=None, threshold=None, baseline=None,
        samples=samples, baseline_samples=None, required_samples=required, dry_run=gate.dry_run,
        detail=detail, confidence=gate.confidence,
    )  # fmt: skip


def _accuracy(gate: GateSpec, required: int, outcomes: OutcomeEvidence | None) -> GateResult:
    relative = gate.mode == "relative"
    mine = outcomes.samples if outcomes is not None else 0
    theirs = outcomes.baseline_samples if outcomes is not None else 0
    common: dict[str, Any] = {
        "gate": gate.name, "metric": gate.metric, "samples": mine,
        "baseline_samples": theirs if relative else None, "required_samples": required,
        "dry_run": gate.dry_run, "confidence": gate.confidence,
    }  # fmt: skip
    needed = max(required, 1)
    if outcomes is None or mine < needed or (relative and theirs < needed):
        who, count = ("candidate", mine) if mine < needed else ("baseline", theirs)
        return GateResult(
            verdict=INCONCLUSIVE, observed=None, threshold=None, baseline=None,
            detail=f"{who} has {count} of {required} labelled rows", **common,
        )  # fmt: skip
    alpha = 1.0 - gate.confidence
    accuracy = outcomes.correct / mine
    if not relative:
        bounds = rate_interval(outcomes.correct, mine, alpha=alpha, tau=AGREEMENT_TAU)
        plausible = accuracy + rate_sd(outcomes.correct, mine)
        verdict = _decide(fails=(bounds.high or 1.0) < gate.threshold, passes=plausible >= gate.threshold)
        detail = f"accuracy {accuracy:.4f} {_interval(bounds)} vs minimum {gate.threshold:g}"
        return GateResult(
            verdict=verdict, observed=accuracy, interval=bounds.as_list(), threshold=gate.threshold,
            baseline=None, detail=_explain(verdict, detail), **common,
        )  # fmt: skip
    base_correct = outcomes.baseline_correct
    base = base_correct / theirs
    drop = max((1.0 - gate.threshold) * base, gate.floor)
    tau = _rate_tau(drop)
    difference = rate_difference_interval(outcomes.correct, mine, base_correct, theirs, alpha=alpha, tau=tau)
    change = difference.estimate or 0.0
    plausible = change + math.hypot(rate_sd(outcomes.correct, mine), rate_sd(base_correct, theirs))
    verdict = _decide(fails=(difference.high or 0.0) < -drop, passes=plausible >= -drop)
    detail = (
        f"accuracy {accuracy:.4f} vs live {base:.4f}: change {change:+.4f} {_interval(difference)} "
        f"vs allowed drop {drop:.4g} (max({1.0 - gate.threshold:g} of live, floor {gate.floor:g}))"
    )
    return GateResult(
        verdict=verdict, observed=accuracy, threshold=base - drop, baseline=base,
        interval=rate_interval(outcomes.correct, mine, alpha=alpha, tau=tau).as_list(),
        baseline_interval=rate_interval(base_correct, theirs, alpha=alpha, tau=tau).as_list(),
        difference=change, difference_interval=difference.as_list(), detail=_explain(verdict, detail),
        **common,
    )  # fmt: skip


def _samples_to_fail(gate: GateSpec, required: int, stage: Stage) -> int:
    # A confidence sequence is valid at any sample size (few samples only widen it), so in a shadow
    # stage (unseen by users, and long: it waits for the power to have seen a regression) a failure
    # beyond doubt counts before the stage's minimum. Elsewhere a minimum is a minimum for any
    # verdict. A latency quantile never goes below its own minimum (values beyond it).
    if not stage.shadow:
        return required
    floor = min_samples_for_quantile(QUANTILES[gate.metric]) if gate.metric in QUANTILES else 0
    return min(required, max(FAIL_MIN_SAMPLES, floor))


def _rate_tau(margin: float) -> float:
    # Tuned to effects a few times the margin (what a regression looks like), not to the margin
    # itself: a mixture tuned to tiny effects makes early looks needlessly wide.
    return max(2.0 * margin, 0.01)


def _decide(*, fails: bool, passes: bool) -> str:
    return FAIL if fails else PASS if passes else INCONCLUSIVE


def _explain(verdict: str, detail: str) -> str:
    if verdict == FAIL:
        return f"{detail}: worse beyond doubt"
    if verdict == INCONCLUSIVE:
        return f"{detail}: looks worse, not yet beyond doubt (holding)"
    return detail


def _interval(bounds: Bounds) -> str:
    def number(value: float | None, missing: str) -> str:
        return missing if value is None else f"{value:.4g}"

    return f"[{number(bounds.low, '-inf')}, {number(bounds.high, 'inf')}]"
