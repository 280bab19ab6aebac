"""Gate evaluation: pure functions from a stage and the metrics seen to a verdict per gate.

Verdicts are `pass`, `fail` or `inconclusive`. Too few samples (of the candidate, of the baseline for a
relative gate, of shadow comparisons for agreement, of experiment outcomes) is inconclusive: "no data"
never passes a gate. Relative gates compare `candidate <= max(threshold * baseline, floor)` and never
divide, so a baseline of 0 is well defined (the floor is the allowance). Every result carries the
numbers behind it: observed value, effective limit, baseline value and sample counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelserve.rollout.plan import GateSpec, Stage
from modelserve.telemetry.windows import WindowStats

PASS = "pass"
FAIL = "fail"
INCONCLUSIVE = "inconclusive"


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowAgreement:
    """How often the candidate's shadow result agreed with the primary's, over `samples` comparisons."""

    rate: float | None
    samples: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentEvidence:
    """Input of the "not significantly worse" gate (filled in by the experiments layer)."""

    significantly_worse: bool
    samples: int
    detail: str = ""


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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, used by events and webhooks."""
        return {
            "gate": self.gate,
            "metric": self.metric,
            "verdict": self.verdict,
            "observed": self.observed,
            "threshold": self.threshold,
            "baseline": self.baseline,
            "samples": self.samples,
            "baseline_samples": self.baseline_samples,
            "required_samples": self.required_samples,
            "dry_run": self.dry_run,
            "detail": self.detail,
        }


def evaluate_gates(
    stage: Stage,
    candidate: WindowStats,
    baseline: WindowStats | None,
    *,
    agreement: ShadowAgreement | None = None,
    experiment: ExperimentEvidence | None = None,
) -> tuple[GateResult, ...]:
    """Evaluate every gate of `stage`; the result order follows `stage.gates`."""
    return tuple(evaluate_gate(g, stage, candidate, baseline, agreement, experiment) for g in stage.gates)


def evaluate_gate(
    gate: GateSpec,
    stage: Stage,
    candidate: WindowStats,
    baseline: WindowStats | None,
    agreement: ShadowAgreement | None = None,
    experiment: ExperimentEvidence | None = None,
) -> GateResult:
    """Evaluate one gate (see the module docstring for the rules)."""
    required = gate.min_samples or stage.min_samples
    if gate.metric == "shadow_agreement":
        return _agreement(gate, required, agreement)
    if gate.metric == "experiment":
        return _experiment(gate, required, experiment)
    observed = getattr(candidate, gate.metric)
    base_value = getattr(baseline, gate.metric) if baseline is not None else None
    base_samples = baseline.requests if baseline is not None else None

    def result(verdict: str, threshold: float | None, detail: str) -> GateResult:
        return GateResult(
            gate=gate.name,
            metric=gate.metric,
            verdict=verdict,
            observed=observed,
            threshold=threshold,
            baseline=base_value if gate.mode == "relative" else None,
            samples=candidate.requests,
            baseline_samples=base_samples if gate.mode == "relative" else None,
            required_samples=required,
            dry_run=gate.dry_run,
            detail=detail,
        )

    if candidate.requests < required or observed is None:
        return result(INCONCLUSIVE, None, f"candidate has {candidate.requests} of {required} samples")
    if gate.mode == "absolute":
        limit = gate.threshold
        how = f"limit {limit:.6g}"
    else:
        if baseline is None or base_samples is None or base_samples < required or base_value is None:
            got = 0 if base_samples is None else base_samples
            return result(INCONCLUSIVE, None, f"baseline has {got} of {required} samples")
        limit = max(gate.threshold * base_value, gate.floor)
        how = f"limit max({gate.threshold:g} x baseline {base_value:.6g}, floor {gate.floor:g}) = {limit:.6g}"
    verdict = PASS if observed <= limit else FAIL
    return result(verdict, limit, f"{gate.metric} {observed:.6g} {'<=' if verdict == PASS else '>'} {how}")


def _agreement(gate: GateSpec, required: int, agreement: ShadowAgreement | None) -> GateResult:
    samples = agreement.samples if agreement is not None else 0
    rate = agreement.rate if agreement is not None else None
    if rate is None or samples < required:
        verdict, detail = INCONCLUSIVE, f"{samples} of {required} shadow comparisons"
    elif rate >= gate.threshold:
        verdict, detail = PASS, f"agreement {rate:.4f} >= {gate.threshold:g}"
    else:
        verdict, detail = FAIL, f"agreement {rate:.4f} < {gate.threshold:g}"
    return GateResult(
        gate=gate.name,
        metric=gate.metric,
        verdict=verdict,
        observed=rate,
        threshold=gate.threshold,
        baseline=None,
        samples=samples,
        baseline_samples=None,
        required_samples=required,
        dry_run=gate.dry_run,
        detail=detail,
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
        gate=gate.name,
        metric=gate.metric,
        verdict=verdict,
        observed=None,
        threshold=None,
        baseline=None,
        samples=samples,
        baseline_samples=None,
        required_samples=required,
        dry_run=gate.dry_run,
        detail=detail,
    )
