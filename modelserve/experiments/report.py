"""`report(spec, counters)`: per-arm summaries, comparisons with the control, SRM, guardrails, segments.

Decisions rest on the always-valid (mSPRT) p-value so the report may be read at any time; the
fixed-horizon p-value (z-test or Welch) is shown beside it. With more than two arms each arm is
compared with the control and p-values are Holm-adjusted; equivalence uses Bonferroni-adjusted
confidence sequences. A flagged sample-ratio mismatch voids every verdict. Bandit policies move the
weights on purpose, so no SRM check applies to them.

Verdicts (per comparison, and overall): "B better", "A better", "equivalent within MDE",
"inconclusive" (with `samples_needed` more outcomes per arm), "invalid (SRM)". "B" is the treatment
arm of a comparison; "better" respects the metric's `higher_is_better`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from modelserve.experiments.bandits import ArmPosterior, BanditPolicy
from modelserve.experiments.experiment import ExperimentCounters, ExperimentSpec, MetricCounter, MetricSpec
from modelserve.experiments.render import render_report
from modelserve.experiments.sequential import (
    SequentialResult,
    mixing_tau,
    msprt_means,
    msprt_proportions,
    sequential_sample_size,
)
from modelserve.experiments.srm import SrmResult, srm_check
from modelserve.experiments.stats import (
    Interval,
    Lift,
    TestResult,
    holm_adjust,
    lift_means,
    lift_proportions,
    mean_interval,
    welch_t_test,
    wilson_interval,
    z_test_proportions,
)

B_BETTER, A_BETTER, EQUIVALENT, INCONCLUSIVE, INVALID = (
    "B better",
    "A better",
    "equivalent within MDE",
    "inconclusive",
    "invalid (SRM)",
)
VERDICTS = (B_BETTER, A_BETTER, EQUIVALENT, INCONCLUSIVE, INVALID)


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmSummary:
    """One arm: assignments, outcomes, rate or mean and its 1 - alpha interval (Wilson or t)."""

    arm: str
    weight: float
    assigned: int
    n: int
    estimate: float
    interval: Interval


@dataclass(frozen=True, slots=True, kw_only=True)
class Comparison:
    """One arm against the control on one metric; adjusted p-values are Holm over the family."""

    arm: str
    control: str
    n_control: int
    n_arm: int
    lift: Lift
    p_value: float
    p_adjusted: float
    always_valid_p: float
    always_valid_p_adjusted: float
    confidence_sequence: Interval
    verdict: str
    samples_needed: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SegmentComparison:
    """A comparison restricted to one value of one segment attribute (Holm within the attribute)."""

    attribute: str
    value: str
    comparison: Comparison


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardrailComparison:
    """A guardrail metric of one arm against the control; `harmed` when significantly worse."""

    metric: str
    comparison: Comparison
    harmed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentReport:
    """Everything `modelserve experiment report` shows; `to_dict()` for JSON, `render_table()` for people."""

    model: str
    metric: MetricSpec
    policy: str
    alpha: float
    mde: float
    arms: tuple[ArmSummary, ...]
    comparisons: tuple[Comparison, ...]
    srm: SrmResult | None
    verdict: str
    winner: str | None
    samples_needed: int | None
    guardrails: tuple[GuardrailComparison, ...] = ()
    segments: tuple[SegmentComparison, ...] = ()
    posterior: tuple[ArmPosterior, ...] = ()
    #: Bandit arms taken out of the draw (failed health gates), with the reason.
    removed: tuple[tuple[str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; NaN and infinities become None."""
        result: dict[str, Any] = _clean(asdict(self))
        return result

    def render_table(self) -> str:
        """A readable text table of the report."""
        return render_report(self)


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _summary(metric: MetricSpec, counter: MetricCounter, alpha: float) -> tuple[float, Interval]:
    if metric.kind == "binary":
        return counter.mean, wilson_interval(counter.successes, counter.n, alpha=alpha)
    return counter.mean, mean_interval(counter.n, counter.mean, counter.variance, alpha=alpha)


def _tests(
    metric: MetricSpec, a: MetricCounter, b: MetricCounter, spec: ExperimentSpec, alpha: float
) -> tuple[Lift, TestResult, SequentialResult, float]:
    """Lift, fixed-horizon test, mSPRT at `alpha`, and the per-observation variance of the control."""
    if metric.kind == "binary":
        var_a = a.mean * (1 - a.mean) if a.n else math.nan
        tau = mixing_tau(spec.mde, a.mean if a.n else 0.0, math.sqrt(var_a) if a.n else None)
        return (
            lift_proportions(a.successes, a.n, b.successes, b.n, alpha=spec.alpha),
            z_test_proportions(a.successes, a.n, b.successes, b.n),
            msprt_proportions(a.successes, a.n, b.successes, b.n, tau=tau, alpha=alpha),
            var_a,
        )
    var_a, var_b = a.variance, b.variance
    sd_a = math.sqrt(var_a) if a.n > 1 else None
    tau = mixing_tau(spec.mde, a.mean if a.n else 0.0, sd_a)
    return (
        lift_means(a.n, a.mean, var_a, b.n, b.mean, var_b, alpha=spec.alpha),
        welch_t_test(a.n, a.mean, var_a, b.n, b.mean, var_b),
        msprt_means(a.n, a.mean, var_a, b.n, b.mean, var_b, tau=tau, alpha=alpha),
        var_a,
    )


def _samples_needed(
    metric: MetricSpec, a: MetricCounter, b: MetricCounter, spec: ExperimentSpec, alpha: float, var_a: float
) -> int | None:
    """Outcomes per arm still needed for the sequential test to have `spec.power` at the MDE."""
    margin = abs(spec.mde * a.mean) if a.n else 0.0
    if metric.kind == "binary":
        treated = min(max(a.mean * (1 + spec.mde), 0.0), 1.0) if a.n else math.nan
        unit_variance = var_a + treated * (1 - treated)
    else:
        unit_variance = 2 * var_a
    if not (margin > 0 and unit_variance > 0):
        return None
    tau = mixing_tau(spec.mde, a.mean)
    needed = sequential_sample_size(margin, unit_variance, tau=tau, alpha=alpha, power=spec.power)
    return max(0, math.ceil(needed) - min(a.n, b.n))


def _verdict(better: bool, significant: bool, equivalent: bool) -> str:
    if significant:
        return B_BETTER if better else A_BETTER
    return EQUIVALENT if equivalent else INCONCLUSIVE


def _compare_family(
    metric: MetricSpec,
    pairs: list[tuple[str, MetricCounter, MetricCounter]],
    spec: ExperimentSpec,
    *,
    invalid: bool,
    plan: bool,
) -> list[Comparison]:
    """Compare each (arm, control counter, arm counter) with Holm over the family."""
    m = max(len(pairs), 1)
    results = [_tests(metric, a, b, spec, spec.alpha / m) for _, a, b in pairs]
    p_adj = holm_adjust([fixed.p_value for _, fixed, _, _ in results])
    seq_adj = holm_adjust([seq.p_value for _, _, seq, _ in results])
    out = []
    for (arm, a, b), (lift, fixed, seq, var_a), pa, sa in zip(pairs, results, p_adj, seq_adj, strict=True):
        margin = abs(spec.mde * a.mean) if a.n else 0.0
        cs = seq.interval
        equivalent = margin > 0 and -margin <= cs.low and cs.high <= margin
        better = (seq.estimate > 0) == metric.higher_is_better
        verdict = INVALID if invalid else _verdict(better, sa <= spec.alpha, equivalent)
        needed = (
            _samples_needed(metric, a, b, spec, spec.alpha / m, var_a)
            if plan and verdict == INCONCLUSIVE
            else None
        )
        out.append(
            Comparison(
                arm=arm,
                control=spec.control,
                n_control=a.n,
                n_arm=b.n,
                lift=lift,
                p_value=fixed.p_value,
                p_adjusted=pa,
                always_valid_p=seq.p_value,
                always_valid_p_adjusted=sa,
                confidence_sequence=cs,
                verdict=verdict,
                samples_needed=needed,
            )
        )
    return out


def _overall(comparisons: list[Comparison], higher_is_better: bool, control: str) -> tuple[str, str | None]:
    verdicts = {c.verdict for c in comparisons}
    if INVALID in verdicts:
        return INVALID, None
    winners = [c for c in comparisons if c.verdict == B_BETTER]
    if winners:
        best = max(winners, key=lambda c: c.lift.absolute if higher_is_better else -c.lift.absolute)
        return B_BETTER, best.arm
    if verdicts == {EQUIVALENT}:
        return EQUIVALENT, None
    if A_BETTER in verdicts and verdicts <= {A_BETTER, EQUIVALENT}:
        return A_BETTER, control
    return INCONCLUSIVE, None


def report(
    spec: ExperimentSpec, counters: ExperimentCounters, *, bandit: BanditPolicy | None = None
) -> ExperimentReport:
    """Analyse an experiment's counters. Pure: no I/O, safe to call at any time (always-valid)."""
    arms = counters.arms
    control = arms[spec.control]
    summaries = []
    for arm_spec in spec.arms:
        arm_counts = arms[arm_spec.version]
        estimate, interval = _summary(spec.metric, arm_counts.metric, spec.alpha)
        summaries.append(
            ArmSummary(
                arm=arm_spec.version,
                weight=arm_spec.weight,
                assigned=arm_counts.assigned,
                n=arm_counts.metric.n,
                estimate=estimate,
                interval=interval,
            )
        )
    srm = None
    if spec.policy == "fixed":
        srm = srm_check([arms[v].assigned for v in spec.versions], [a.weight for a in spec.arms])
    invalid = srm is not None and srm.flagged
    treatments = spec.versions[1:]
    comparisons = _compare_family(
        spec.metric,
        [(v, control.metric, arms[v].metric) for v in treatments],
        spec,
        invalid=invalid,
        plan=True,
    )
    verdict, winner = _overall(comparisons, spec.metric.higher_is_better, spec.control)
    needed = [c.samples_needed for c in comparisons if c.samples_needed is not None]
    guardrails = []
    for g in spec.guardrails:
        pairs = [
            (
                v,
                control.guardrails.get(g.name, MetricCounter()),
                arms[v].guardrails.get(g.name, MetricCounter()),
            )
            for v in treatments
        ]
        for c in _compare_family(g, pairs, spec, invalid=False, plan=False):
            guardrails.append(GuardrailComparison(metric=g.name, comparison=c, harmed=c.verdict == A_BETTER))
    segments = []
    for attribute in spec.segments:
        keys: list[tuple[str, str, MetricCounter, MetricCounter]] = []
        values = sorted({val for v in spec.versions for val in arms[v].segments.get(attribute, {})})
        for value in values:
            a = control.segments.get(attribute, {}).get(value, MetricCounter())
            keys += [
                (value, v, a, arms[v].segments.get(attribute, {}).get(value, MetricCounter()))
                for v in treatments
            ]
        family = _compare_family(
            spec.metric, [(v, a, b) for _, v, a, b in keys], spec, invalid=invalid, plan=False
        )
        segments += [
            SegmentComparison(attribute=attribute, value=k[0], comparison=c)
            for k, c in zip(keys, family, strict=True)
        ]
    return ExperimentReport(
        model=spec.model,
        metric=spec.metric,
        policy=spec.policy,
        alpha=spec.alpha,
        mde=spec.mde,
        arms=tuple(summaries),
        comparisons=tuple(comparisons),
        srm=srm,
        verdict=verdict,
        winner=winner,
        samples_needed=max(needed) if verdict == INCONCLUSIVE and needed else None,
        guardrails=tuple(guardrails),
        segments=tuple(segments),
        posterior=tuple(bandit.posterior()) if bandit is not None else (),
        removed=tuple(bandit.removed.items()) if bandit is not None else (),
    )
