"""Planning an experiment before it starts: users per arm and days at a given traffic (`experiment size`).

Two to N arms, each treatment compared with the control, so m = arms - 1 comparisons share alpha:
each is planned at alpha / m (Bonferroni). Holm, which the report uses, rejects the smallest p-value
at alpha / m and the others at larger levels, so a plan that has the power at alpha / m has at least
that power under Holm: the size is Holm-aware in being safe for it, never optimistic.

- binary metrics: Cohen's h with the normal approximation, as statsmodels' `NormalIndPower` (both
  tails counted, `stats.sample_size_proportions`);
- continuous metrics: the two-sample t-test with n - 2 degrees of freedom, as statsmodels'
  `TTestIndPower` (the noncentral t distribution; the normal approximation is slightly low:
  393.41 against 392.44 users per arm for d = 0.2).

Checked against statsmodels for two and three arms in tests/test_sizing.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import optimize
from scipy.stats import nct
from scipy.stats import t as student_t

from modelserve.experiments.stats import sample_size_proportions


def t_test_power(effect_size: float, n_per_arm: float, alpha: float = 0.05) -> float:
    """Power of the two-sided two-sample t-test (equal n, pooled variance) for Cohen's d."""
    df = 2 * n_per_arm - 2
    noncentrality = abs(effect_size) * math.sqrt(n_per_arm / 2)
    critical = float(student_t.isf(alpha / 2, df))
    return float(nct.sf(critical, df, noncentrality) + nct.cdf(-critical, df, noncentrality))


def sample_size_means_t(effect_size: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Per-arm n (unrounded) for the two-sided t-test to reach `power` for Cohen's d = `effect_size`."""
    if effect_size == 0 or not math.isfinite(effect_size):
        raise ValueError("the effect size must be finite and non-zero")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must lie in (0, 1)")
    high = 4.0
    while t_test_power(effect_size, high, alpha) < power:
        high *= 2
    return float(
        optimize.brentq(lambda n: t_test_power(effect_size, n, alpha) - power, 1.5, high, xtol=1e-10)
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class SizePlan:
    """How many users an experiment needs, and how long that takes at `daily_users`."""

    kind: str
    arms: int
    comparisons: int
    alpha: float
    alpha_per_comparison: float
    power: float
    baseline: float
    mde_relative: float
    effect: float  # absolute difference to detect (B - A)
    effect_size: float  # Cohen's h (binary) or d (continuous)
    n_per_arm_exact: float
    users_per_arm: int
    total_users: int
    daily_users: float | None
    days: float | None
    method: str

    def describe(self) -> str:
        """Readable lines for the command line."""
        lines = [
            f"{self.arms} arms ({self.comparisons} comparison{'s' if self.comparisons > 1 else ''} with "
            f"the control), alpha {self.alpha:g} -> {self.alpha_per_comparison:.4g} per comparison "
            "(Bonferroni; Holm needs no more), power {:g}".format(self.power),
            f"baseline {self.baseline:g}, MDE {self.mde_relative:+.2%} relative "
            f"({self.effect:+.4g} absolute, effect size {self.effect_size:.4f}); {self.method}",
            f"users per arm: {self.users_per_arm:,}   total: {self.total_users:,}",
        ]
        if self.days is not None and self.daily_users:
            lines.append(f"days at {self.daily_users:,.0f} users a day: {self.days:.1f}")
        else:
            lines.append("days: unknown (no traffic yet; pass --daily-users)")
        return "\n".join(lines)


def plan(
    *,
    kind: str,
    baseline: float,
    mde_relative: float,
    alpha: float = 0.05,
    power: float = 0.8,
    arms: int = 2,
    sd: float | None = None,
    daily_users: float | None = None,
) -> SizePlan:
    """Size an experiment; ValueError names a bad input."""
    if arms < 2:
        raise ValueError("an experiment needs at least two arms (the control and one treatment)")
    if mde_relative == 0:
        raise ValueError("the MDE must be non-zero")
    comparisons = arms - 1
    per = alpha / comparisons
    effect = baseline * mde_relative
    if kind == "binary":
        n = sample_size_proportions(baseline, mde_relative, alpha=per, power=power)
        size = 2 * math.asin(math.sqrt(baseline + effect)) - 2 * math.asin(math.sqrt(baseline))
        method = "Cohen's h, normal approximation (statsmodels NormalIndPower)"
    elif kind == "continuous":
        if sd is None or not sd > 0:
            raise ValueError("a continuous metric needs its standard deviation (--sd)")
        size = effect / sd
        n = sample_size_means_t(size, alpha=per, power=power)
        method = "two-sample t-test, noncentral t (statsmodels TTestIndPower)"
    else:
        raise ValueError(f"kind must be binary or continuous, got {kind!r}")
    users = math.ceil(n)
    total = users * arms
    days = total / daily_users if daily_users else None
    return SizePlan(
        kind=kind, arms=arms, comparisons=comparisons, alpha=alpha, alpha_per_comparison=per, power=power,
        baseline=baseline, mde_relative=mde_relative, effect=effect, effect_size=size, n_per_arm_exact=n,
        users_per_arm=users, total_users=total, daily_users=daily_users, days=days, method=method,
    )  # fmt: skip
