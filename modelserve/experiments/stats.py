"""Fixed-horizon A/B statistics: sample size and power, z-test, Welch t-test, intervals, lift, Holm.

Pure functions of summary counts (n, successes, mean, variance), so streaming counters suffice.
Every function here agrees with statsmodels/scipy to 1e-6 (see tests/test_stats.py):

- sample size / power: statsmodels ``NormalIndPower`` (two-sided, both tails), with Cohen's h for
  proportions. The difference of two arcsine-transformed rates has variance 2/n, so the per-arm size is
  n = 2 * ((z_{1-a/2} + z_{power}) / h)^2 (about 57,756 for 10% -> 10.5%), not ((z + z) / h)^2.
- two-proportion z-test: pooled variance (``proportions_ztest``).
- Welch t-test: ``scipy.stats.ttest_ind_from_stats(equal_var=False)``.
- Wilson interval per arm; Newcombe hybrid score interval for a difference of proportions.
- relative lift interval: delta method on the log ratio (Katz), which for proportions is exactly
  ``confint_proportions_2indep(method="log", compare="ratio")``; for means the same delta method
  on log(mean_b / mean_a), needing both means positive (else no interval is given).

Differences and lifts are always "B minus A" (treatment minus control).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import optimize
from scipy.stats import norm
from scipy.stats import t as student_t

NAN = float("nan")


@dataclass(frozen=True, slots=True, kw_only=True)
class Interval:
    """A two-sided interval; bounds are NaN when it is undefined (e.g. no data)."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True, slots=True, kw_only=True)
class TestResult:
    """A test statistic and its two-sided p-value; `df` only for t-tests."""

    statistic: float
    p_value: float
    df: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Lift:
    """Absolute (B - A) and relative (B / A - 1) lift with their intervals."""

    absolute: float
    absolute_interval: Interval
    relative: float
    relative_interval: Interval


_UNDEFINED = Interval(low=NAN, high=NAN)


def _z(alpha: float) -> float:
    return float(norm.isf(alpha / 2))


def normal_power(effect_size: float, n_per_arm: float, alpha: float = 0.05) -> float:
    """Power of a two-sided two-sample z-test for a standardised effect with n per arm (both tails)."""
    shift = abs(effect_size) * math.sqrt(n_per_arm / 2)
    crit = _z(alpha)
    return float(norm.sf(crit - shift) + norm.cdf(-crit - shift))


def _solve_n(effect_size: float, alpha: float, power: float) -> float:
    if effect_size == 0 or not math.isfinite(effect_size):
        raise ValueError("the effect size must be finite and non-zero")
    if not (0 < alpha < 1 and 0 < power < 1):
        raise ValueError("alpha and power must lie in (0, 1)")
    # The one-tail closed form is a close lower bound; the root including the far tail sits just below it.
    guess = 2 * ((_z(alpha) + float(norm.ppf(power))) / effect_size) ** 2
    return float(
        optimize.brentq(
            lambda n: normal_power(effect_size, n, alpha) - power, 1e-9, guess * 2 + 10, xtol=1e-10
        )
    )


def cohens_h(p_a: float, p_b: float) -> float:
    """Cohen's h: the difference of arcsine-transformed rates, 2 asin sqrt(p_b) - 2 asin sqrt(p_a)."""
    return 2 * math.asin(math.sqrt(p_b)) - 2 * math.asin(math.sqrt(p_a))


def sample_size_proportions(
    baseline: float, mde_relative: float, *, alpha: float = 0.05, power: float = 0.8
) -> float:
    """Per-arm sample size (unrounded; round up to plan) to detect `baseline * (1 + mde_relative)`."""
    if not 0 < baseline < 1 or not 0 < baseline * (1 + mde_relative) < 1:
        raise ValueError("both rates must lie strictly between 0 and 1")
    return _solve_n(cohens_h(baseline, baseline * (1 + mde_relative)), alpha, power)


def power_proportions(p_a: float, p_b: float, n_per_arm: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided test of p_a vs p_b with n per arm (Cohen's h, normal approximation)."""
    return normal_power(cohens_h(p_a, p_b), n_per_arm, alpha)


def sample_size_means(mde_absolute: float, sd: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Per-arm sample size (unrounded) to detect a difference of means `mde_absolute` given the sd."""
    if sd <= 0:
        raise ValueError("the standard deviation must be positive")
    return _solve_n(mde_absolute / sd, alpha, power)


def power_means(mde_absolute: float, sd: float, n_per_arm: float, *, alpha: float = 0.05) -> float:
    """Power of the two-sided test for a difference of means with n per arm (normal approximation)."""
    return normal_power(mde_absolute / sd, n_per_arm, alpha)


def z_test_proportions(successes_a: int, n_a: int, successes_b: int, n_b: int) -> TestResult:
    """Two-proportion z-test with the pooled variance; statistic > 0 when B's rate is higher."""
    if n_a <= 0 or n_b <= 0:
        return TestResult(statistic=NAN, p_value=NAN)
    pooled = (successes_a + successes_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return TestResult(statistic=0.0, p_value=1.0)  # both arms all 0 or all 1: no evidence
    statistic = (successes_b / n_b - successes_a / n_a) / math.sqrt(variance)
    return TestResult(statistic=statistic, p_value=float(2 * norm.sf(abs(statistic))))


def _welch_parts(n_a: int, var_a: float, n_b: int, var_b: float) -> tuple[float, float]:
    """Standard error of the difference of means and the Welch-Satterthwaite degrees of freedom."""
    va, vb = var_a / n_a, var_b / n_b
    se2 = va + vb
    df = se2**2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1)) if se2 > 0 else NAN
    return math.sqrt(se2), df


def welch_t_test(n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float) -> TestResult:
    """Welch's unequal-variance t-test from summary statistics (sample variances, ddof=1)."""
    if n_a < 2 or n_b < 2:
        return TestResult(statistic=NAN, p_value=NAN)
    se, df = _welch_parts(n_a, var_a, n_b, var_b)
    if se == 0:
        return TestResult(statistic=0.0, p_value=1.0 if mean_a == mean_b else 0.0, df=df)
    statistic = (mean_b - mean_a) / se
    return TestResult(statistic=statistic, p_value=float(2 * student_t.sf(abs(statistic), df)), df=df)


def welch_interval(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float, *, alpha: float = 0.05
) -> Interval:
    """Welch interval for mean_b - mean_a."""
    if n_a < 2 or n_b < 2:
        return _UNDEFINED
    se, df = _welch_parts(n_a, var_a, n_b, var_b)
    half = float(student_t.isf(alpha / 2, df)) * se if se > 0 else 0.0
    return Interval(low=mean_b - mean_a - half, high=mean_b - mean_a + half)


def mean_interval(n: int, mean: float, var: float, *, alpha: float = 0.05) -> Interval:
    """Student t interval for one arm's mean."""
    if n < 2:
        return _UNDEFINED
    half = float(student_t.isf(alpha / 2, n - 1)) * math.sqrt(var / n)
    return Interval(low=mean - half, high=mean + half)


def wilson_interval(successes: int, n: int, *, alpha: float = 0.05) -> Interval:
    """Wilson score interval for one arm's rate."""
    if n <= 0:
        return _UNDEFINED
    z = _z(alpha)
    z2 = z * z
    centre = (successes + z2 / 2) / (n + z2)
    half = z / (n + z2) * math.sqrt(successes * (n - successes) / n + z2 / 4)
    return Interval(low=centre - half, high=centre + half)


def newcombe_interval(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *, alpha: float = 0.05
) -> Interval:
    """Newcombe's hybrid score interval (method 10) for p_b - p_a, built from the two Wilson intervals."""
    if n_a <= 0 or n_b <= 0:
        return _UNDEFINED
    p_a, p_b = successes_a / n_a, successes_b / n_b
    wa, wb = wilson_interval(successes_a, n_a, alpha=alpha), wilson_interval(successes_b, n_b, alpha=alpha)
    diff = p_b - p_a
    low = diff - math.hypot(p_b - wb.low, wa.high - p_a)
    high = diff + math.hypot(wb.high - p_b, p_a - wa.low)
    return Interval(low=low, high=high)


def _log_ratio_interval(ratio: float, se_log: float, alpha: float) -> Interval:
    half = _z(alpha) * se_log
    return Interval(low=ratio * math.exp(-half) - 1, high=ratio * math.exp(half) - 1)


def lift_proportions(successes_a: int, n_a: int, successes_b: int, n_b: int, *, alpha: float = 0.05) -> Lift:
    """Absolute lift with Newcombe's interval; relative lift with the Katz log-ratio interval."""
    if n_a <= 0 or n_b <= 0:
        return Lift(absolute=NAN, absolute_interval=_UNDEFINED, relative=NAN, relative_interval=_UNDEFINED)
    p_a, p_b = successes_a / n_a, successes_b / n_b
    absolute = Lift(
        absolute=p_b - p_a,
        absolute_interval=newcombe_interval(successes_a, n_a, successes_b, n_b, alpha=alpha),
        relative=NAN,
        relative_interval=_UNDEFINED,
    )
    if successes_a == 0 or successes_b == 0:
        return absolute if p_a == 0 else _with_relative(absolute, p_b / p_a - 1, _UNDEFINED)
    ratio = p_b / p_a
    se_log = math.sqrt(1 / successes_a - 1 / n_a + 1 / successes_b - 1 / n_b)
    return _with_relative(absolute, ratio - 1, _log_ratio_interval(ratio, se_log, alpha))


def lift_means(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float, *, alpha: float = 0.05
) -> Lift:
    """Absolute lift with the Welch interval; relative lift with a delta-method log-ratio interval."""
    absolute = Lift(
        absolute=mean_b - mean_a if n_a and n_b else NAN,
        absolute_interval=welch_interval(n_a, mean_a, var_a, n_b, mean_b, var_b, alpha=alpha),
        relative=NAN,
        relative_interval=_UNDEFINED,
    )
    if n_a < 2 or n_b < 2 or mean_a == 0:
        return absolute
    relative = mean_b / mean_a - 1
    if mean_a < 0 or mean_b <= 0:
        return _with_relative(absolute, relative, _UNDEFINED)
    se_log = math.sqrt(var_a / (n_a * mean_a**2) + var_b / (n_b * mean_b**2))
    return _with_relative(absolute, relative, _log_ratio_interval(mean_b / mean_a, se_log, alpha))


def _with_relative(lift: Lift, relative: float, interval: Interval) -> Lift:
    return Lift(
        absolute=lift.absolute,
        absolute_interval=lift.absolute_interval,
        relative=relative,
        relative_interval=interval,
    )


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given); NaN entries stay NaN and are not counted."""
    indexed = sorted((p, i) for i, p in enumerate(p_values) if not math.isnan(p))
    adjusted = [NAN] * len(p_values)
    running = 0.0
    m = len(indexed)
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted
