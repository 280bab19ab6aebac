"""Sample-ratio-mismatch check: chi-square goodness of fit against the configured weights."""

from __future__ import annotations

import pytest
from scipy.stats import chisquare

from modelserve.experiments.srm import SRM_THRESHOLD, srm_check


def test_srm_matches_scipy_chisquare_against_the_weights() -> None:
    result = srm_check([5_120, 4_880], [0.5, 0.5])
    oracle = chisquare([5_120, 4_880], [5_000, 5_000])
    assert result.statistic == pytest.approx(oracle.statistic, abs=1e-9)
    assert result.p_value == pytest.approx(oracle.pvalue, abs=1e-9)
    assert result.expected == (5_000.0, 5_000.0)


def test_unequal_weights_on_any_scale_give_the_same_result() -> None:
    a = srm_check([2_100, 7_900, 1_000], [20, 70, 10])
    b = srm_check([2_100, 7_900, 1_000], [0.2, 0.7, 0.1])
    oracle = chisquare([2_100, 7_900, 1_000], [2_200, 7_700, 1_100])
    assert a.p_value == pytest.approx(b.p_value) == pytest.approx(oracle.pvalue)


def test_skewed_assignment_is_flagged_below_one_in_a_thousand() -> None:
    result = srm_check([10_300, 9_700], [0.5, 0.5])
    assert result.p_value < SRM_THRESHOLD and result.flagged
    assert "MISMATCH" in result.describe()


def test_ordinary_noise_is_not_flagged() -> None:
    result = srm_check([10_090, 9_910], [0.5, 0.5])
    assert not result.flagged and result.p_value > 0.1
    assert result.describe().startswith("ok")


def test_no_assignments_yet_is_not_a_mismatch() -> None:
    result = srm_check([0, 0], [0.5, 0.5])
    assert result.p_value == 1.0 and not result.flagged


def test_traffic_to_a_zero_weight_arm_is_a_certain_mismatch() -> None:
    result = srm_check([100, 100, 3], [0.5, 0.5, 0.0])
    assert result.flagged and result.p_value == 0.0
    assert not srm_check([100, 104, 0], [0.5, 0.5, 0.0]).flagged


def test_mismatched_lengths_are_rejected() -> None:
    with pytest.raises(ValueError):
        srm_check([1, 2], [1.0])
