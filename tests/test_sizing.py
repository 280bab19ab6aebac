"""`experiment size` against statsmodels: proportions (NormalIndPower, Cohen's h) and means
(TTestIndPower, the t distribution), for two and three arms (alpha split over the comparisons)."""

from __future__ import annotations

import math

import pytest
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import proportion_effectsize

from modelserve.experiments.sizing import plan, sample_size_means_t, t_test_power


@pytest.mark.parametrize("arms", [2, 3])
@pytest.mark.parametrize(("baseline", "mde"), [(0.10, 0.05), (0.10, 0.20), (0.30, -0.10)])
def test_proportions_agree_with_statsmodels(arms: int, baseline: float, mde: float) -> None:
    sized = plan(kind="binary", baseline=baseline, mde_relative=mde, arms=arms)
    h = proportion_effectsize(baseline * (1 + mde), baseline)
    expected = NormalIndPower().solve_power(effect_size=h, alpha=0.05 / (arms - 1), power=0.8, ratio=1.0)
    assert sized.n_per_arm_exact == pytest.approx(expected, rel=1e-6)
    assert sized.users_per_arm == math.ceil(expected) and sized.total_users == arms * sized.users_per_arm


def test_the_design_notes_figure_is_reproduced() -> None:
    assert plan(kind="binary", baseline=0.10, mde_relative=0.05).users_per_arm == 57_756


@pytest.mark.parametrize("arms", [2, 3])
@pytest.mark.parametrize(("mean", "mde", "sd"), [(100.0, 0.05, 25.0), (10.0, 0.02, 4.0), (5.0, -0.3, 2.0)])
def test_means_agree_with_statsmodels_t_test_power(arms: int, mean: float, mde: float, sd: float) -> None:
    sized = plan(kind="continuous", baseline=mean, mde_relative=mde, sd=sd, arms=arms)
    expected = TTestIndPower().solve_power(
        effect_size=mean * mde / sd, alpha=0.05 / (arms - 1), power=0.8, ratio=1.0
    )
    assert sized.n_per_arm_exact == pytest.approx(expected, rel=1e-6)


def test_the_t_distribution_needs_slightly_more_than_the_normal_approximation() -> None:
    t_size = sample_size_means_t(0.2)
    normal = NormalIndPower().solve_power(effect_size=0.2, alpha=0.05, power=0.8)
    assert t_size == pytest.approx(393.4057, abs=1e-3) and t_size > normal
    assert t_test_power(0.2, 100) == pytest.approx(TTestIndPower().power(0.2, 100, 0.05), rel=1e-9)


def test_days_follow_the_daily_traffic_and_bad_inputs_are_refused() -> None:
    sized = plan(kind="binary", baseline=0.1, mde_relative=0.2, arms=3, daily_users=1000)
    assert sized.days == pytest.approx(sized.total_users / 1000)
    assert "users per arm" in sized.describe() and "days at 1,000 users a day" in sized.describe()
    for bad in (
        {"kind": "binary", "baseline": 0.1, "mde_relative": 0.0},
        {"kind": "binary", "baseline": 0.1, "mde_relative": 0.1, "arms": 1},
        {"kind": "continuous", "baseline": 1.0, "mde_relative": 0.1},
        {"kind": "ratio", "baseline": 1.0, "mde_relative": 0.1},
    ):
        with pytest.raises(ValueError):
            plan(**bad)  # type: ignore[arg-type]
