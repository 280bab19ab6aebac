"""Fixed-horizon statistics agree with statsmodels/scipy (test oracles only) and with simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)
from statsmodels.stats.weightstats import ttest_ind

from modelserve.experiments.stats import (
    cohens_h,
    holm_adjust,
    lift_means,
    lift_proportions,
    mean_interval,
    newcombe_interval,
    power_means,
    power_proportions,
    sample_size_means,
    sample_size_proportions,
    welch_interval,
    welch_t_test,
    wilson_interval,
    z_test_proportions,
)

TOL = 1e-6
COUNTS = [(120, 1000, 151, 1000), (5, 40, 13, 55), (980, 10_000, 1_070, 10_400), (0, 50, 3, 60)]


def test_sample_size_for_five_percent_relative_on_ten_percent_is_57756_per_arm() -> None:
    n = sample_size_proportions(0.10, 0.05, alpha=0.05, power=0.8)
    assert math.ceil(n) == 57_756  # ~57,760; not 3,142, and not 28,878 (missing the 2 of var(h_a - h_b))
    oracle = NormalIndPower().solve_power(
        effect_size=proportion_effectsize(0.105, 0.10), alpha=0.05, power=0.8
    )
    assert n == pytest.approx(oracle, rel=TOL)


@pytest.mark.parametrize(
    ("baseline", "mde", "alpha", "power"), [(0.3, 0.1, 0.05, 0.9), (0.02, 0.5, 0.01, 0.8)]
)
def test_sample_size_and_power_for_proportions_match_statsmodels(
    baseline: float, mde: float, alpha: float, power: float
) -> None:
    h = proportion_effectsize(baseline * (1 + mde), baseline)
    assert cohens_h(baseline, baseline * (1 + mde)) == pytest.approx(h, rel=TOL)
    n = sample_size_proportions(baseline, mde, alpha=alpha, power=power)
    assert n == pytest.approx(NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power), rel=TOL)
    expected = NormalIndPower().power(effect_size=h, nobs1=1234, alpha=alpha)
    assert power_proportions(baseline, baseline * (1 + mde), 1234, alpha=alpha) == pytest.approx(
        expected, abs=TOL
    )


def test_sample_size_and_power_for_means_match_statsmodels() -> None:
    n = sample_size_means(2.0, 15.0, alpha=0.05, power=0.8)
    oracle = NormalIndPower().solve_power(effect_size=2.0 / 15.0, alpha=0.05, power=0.8)
    assert n == pytest.approx(oracle, rel=TOL)
    assert power_means(2.0, 15.0, 500, alpha=0.05) == pytest.approx(
        NormalIndPower().power(effect_size=2.0 / 15.0, nobs1=500, alpha=0.05), abs=TOL
    )


def _simulated_power(n: int, draws: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    a = rng.binomial(n, 0.10, size=draws)
    b = rng.binomial(n, 0.105, size=draws)
    pooled = (a + b) / (2 * n)
    z = (b - a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    return float(np.mean(np.abs(z) > sps.norm.isf(0.025)))


def test_simulated_power_is_80_percent_at_57756_and_only_51_percent_at_28878() -> None:
    assert _simulated_power(57_756, 40_000, seed=7) == pytest.approx(0.80, abs=0.012)
    assert _simulated_power(28_878, 40_000, seed=8) == pytest.approx(0.51, abs=0.012)


@pytest.mark.parametrize(("sa", "na", "sb", "nb"), COUNTS)
def test_pooled_z_test_matches_statsmodels(sa: int, na: int, sb: int, nb: int) -> None:
    result = z_test_proportions(sa, na, sb, nb)
    statistic, p_value = proportions_ztest([sb, sa], [nb, na])
    assert result.statistic == pytest.approx(statistic, abs=TOL)
    assert result.p_value == pytest.approx(p_value, abs=TOL)


def test_z_test_without_any_variance_reports_no_evidence() -> None:
    assert z_test_proportions(0, 100, 0, 100).p_value == 1.0
    assert math.isnan(z_test_proportions(0, 0, 3, 10).p_value)


def test_welch_t_test_from_summary_statistics_matches_scipy_and_statsmodels() -> None:
    rng = np.random.default_rng(3)
    a, b = rng.normal(10, 3, size=400), rng.normal(10.6, 5, size=250)
    result = welch_t_test(len(a), a.mean(), a.var(ddof=1), len(b), b.mean(), b.var(ddof=1))
    oracle = sps.ttest_ind_from_stats(
        b.mean(), b.std(ddof=1), len(b), a.mean(), a.std(ddof=1), len(a), equal_var=False
    )
    assert result.statistic == pytest.approx(oracle.statistic, abs=TOL)
    assert result.p_value == pytest.approx(oracle.pvalue, abs=TOL)
    statistic, p_value, df = ttest_ind(b, a, usevar="unequal")
    assert (result.statistic, result.p_value, result.df) == pytest.approx((statistic, p_value, df), abs=TOL)
    interval = welch_interval(len(a), a.mean(), a.var(ddof=1), len(b), b.mean(), b.var(ddof=1))
    low, high = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


def test_mean_interval_matches_scipy_t_interval() -> None:
    values = np.random.default_rng(4).exponential(2.0, size=80)
    interval = mean_interval(len(values), values.mean(), values.var(ddof=1))
    low, high = sps.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=sps.sem(values))
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


@pytest.mark.parametrize(("successes", "n"), [(0, 10), (7, 10), (120, 1000), (999, 1000)])
@pytest.mark.parametrize("alpha", [0.05, 0.01])
def test_wilson_interval_matches_statsmodels(successes: int, n: int, alpha: float) -> None:
    interval = wilson_interval(successes, n, alpha=alpha)
    low, high = proportion_confint(successes, n, alpha=alpha, method="wilson")
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


@pytest.mark.parametrize(("sa", "na", "sb", "nb"), COUNTS)
def test_newcombe_interval_for_the_difference_matches_statsmodels(sa: int, na: int, sb: int, nb: int) -> None:
    interval = newcombe_interval(sa, na, sb, nb)
    low, high = confint_proportions_2indep(sb, nb, sa, na, method="newcomb", compare="diff")
    assert (interval.low, interval.high) == pytest.approx((low, high), abs=TOL)


@pytest.mark.parametrize(("sa", "na", "sb", "nb"), COUNTS[:3])
def test_relative_lift_interval_is_the_katz_log_ratio_interval(sa: int, na: int, sb: int, nb: int) -> None:
    lift = lift_proportions(sa, na, sb, nb)
    assert lift.absolute == pytest.approx(sb / nb - sa / na)
    assert lift.relative == pytest.approx((sb / nb) / (sa / na) - 1)
    low, high = confint_proportions_2indep(sb, nb, sa, na, method="log", compare="ratio")
    assert (lift.relative_interval.low, lift.relative_interval.high) == pytest.approx(
        (low - 1, high - 1), abs=TOL
    )


def test_relative_lift_with_no_control_successes_has_no_interval() -> None:
    lift = lift_proportions(0, 50, 3, 60)
    assert math.isnan(lift.relative) and math.isnan(lift.relative_interval.low)


def test_relative_lift_of_means_covers_the_true_ratio_at_the_nominal_rate() -> None:
    rng = np.random.default_rng(5)
    a = rng.exponential(10.0, size=(2000, 300))
    b = rng.exponential(11.0, size=(2000, 300))
    covered = 0
    for xa, xb in zip(a, b, strict=True):
        lift = lift_means(300, xa.mean(), xa.var(ddof=1), 300, xb.mean(), xb.var(ddof=1))
        covered += lift.relative_interval.contains(0.1)
    assert covered / 2000 == pytest.approx(0.95, abs=0.015)


def test_holm_adjustment_matches_statsmodels_and_skips_nan() -> None:
    p = [0.01, 0.04, 0.03, 0.005, 0.2]
    assert holm_adjust(p) == pytest.approx(list(multipletests(p, method="holm")[1]), abs=TOL)
    adjusted = holm_adjust([0.01, float("nan"), 0.04])
    assert (
        math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.02) and adjusted[2] == pytest.approx(0.04)
    )
