"""The promotion recommendation for a shadow version: the rollout gates' verdict, with their evidence.

There is one rule engine. `recommend` evaluates the gates of the default plan's shadow stage
(`report_stage`, thresholds overridable) with `modelserve.rollout.gates.evaluate_gates` on the same
samples a rollout's shadow stage reads (`rollout.sample.stage_samples`: the shadow's and the live
version's series since the shadow started, compared on the thread CPU time of their model runs) and
the shadow's agreement. So `shadow report` and a rollout looking at the same data agree:

| gates | recommendation |
|---|---|
| any acting gate fails (worse beyond doubt) | do not promote |
| every gate passes | promote |
| otherwise (too few samples, or worse but not yet beyond doubt) | not enough data |

Each check is one gate's result: estimate, interval, limit, samples and the rule, in `detail`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Any, Literal

from modelserve.rollout.gates import FAIL, PASS, GateResult, ShadowAgreement, evaluate_gates
from modelserve.rollout.plan import Stage, default_plan
from modelserve.rollout.sample import Sample

Verdict = Literal["promote", "do not promote", "not enough data"]
PROMOTE: Verdict = "promote"
DO_NOT_PROMOTE: Verdict = "do not promote"
NOT_ENOUGH_DATA: Verdict = "not enough data"

#: Report query thresholds -> the gate metric whose threshold they override.
_OVERRIDES = {
    "min_agreement": "shadow_agreement",
    "max_latency_ratio": "p95",
    "max_error_ratio": "error_rate",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Check:
    """One gate's result: `observed` compared with `threshold` by `rule` (">=" or "<=")."""

    name: str
    verdict: str
    observed: float | None
    threshold: float | None
    rule: str
    passed: bool
    interval: list[float | None] | None
    samples: int
    detail: str = ""
    #: The live version's value and samples, and the candidate's excess over it (relative gates).
    baseline: float | None = None
    baseline_samples: int | None = None
    difference_interval: list[float | None] | None = None
    required_samples: int = 0
    confidence: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Recommendation:
    """The verdict on promoting a shadow version and the checks that led to it."""

    model: str
    shadow_version: str
    verdict: Verdict
    checks: tuple[Check, ...]
    latency_measure: str = "compute"

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types, for the admin API and the CLI."""
        return asdict(self)


def report_stage(
    *,
    min_samples: int | None = None,
    min_agreement: float | None = None,
    max_latency_ratio: float | None = None,
    max_error_ratio: float | None = None,
) -> Stage:
    """The default plan's shadow stage, with any of the report's thresholds overridden."""
    stage = next(s for s in default_plan().stages if s.shadow)
    given = {"min_agreement": min_agreement, "max_latency_ratio": max_latency_ratio,
             "max_error_ratio": max_error_ratio}  # fmt: skip
    gates = list(stage.gates)
    for key, value in given.items():
        if value is None:
            continue
        metric = _OVERRIDES[key]
        # The relative error gate only: the absolute one is a fixed limit, not a ratio.
        gates = [
            dataclasses.replace(g, threshold=float(value))
            if g.metric == metric and (metric != "error_rate" or g.mode == "relative")
            else g
            for g in gates
        ]
    if min_samples is not None:
        stage = dataclasses.replace(stage, min_samples=int(min_samples))
    return dataclasses.replace(stage, gates=tuple(gates))


def recommend(
    *,
    model: str,
    shadow_version: str,
    stage: Stage,
    candidate: Sample,
    baseline: Sample,
    agreement: ShadowAgreement | None,
    latency_measure: str = "compute",
) -> Recommendation:
    """Promote, do not promote, or not enough data: the stage's gates on the shadow's samples."""
    results = evaluate_gates(stage, candidate, baseline, agreement=agreement)
    acting = [r for r in results if not r.dry_run]
    if any(r.verdict == FAIL for r in acting):
        verdict = DO_NOT_PROMOTE
    elif all(r.verdict == PASS for r in acting):
        verdict = PROMOTE
    else:
        verdict = NOT_ENOUGH_DATA
    return Recommendation(
        model=model,
        shadow_version=shadow_version,
        verdict=verdict,
        checks=tuple(_check(r) for r in results),
        latency_measure=latency_measure,
    )


def _check(result: GateResult) -> Check:
    return Check(
        name=result.gate,
        verdict=result.verdict,
        observed=result.observed,
        threshold=result.threshold,
        rule=">=" if result.metric == "shadow_agreement" else "<=",
        passed=result.verdict == PASS,
        interval=result.interval,
        samples=result.samples,
        detail=result.detail,
        baseline=result.baseline,
        baseline_samples=result.baseline_samples,
        difference_interval=result.difference_interval,
        required_samples=result.required_samples,
        confidence=result.confidence,
    )
