"""mSPRT: peeking is safe (A/A false positives stay under alpha) and real effects are found."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from modelserve.experiments.sequential import (
    always_valid_p,
    confidence_half_width,
    log_likelihood_ratio,
    mixing_tau,
    msprt_means,
    msprt_proportions,
    sequential_power,
    sequential_sample_size,
)
from modelserve.experiments.stats import sample_size_proportions

ALPHA = 0.05
PEEK_EVERY = 100


def _peeks(p_a: float, p_b: float, experiments: int, looks: int, seed: int) -> tuple[np.ndarray, ...]:
    """Cumulative successes of both arms at every look (vectorised: one binomial per block)."""
    rng = np.random.default_rng(seed)
    s_a = rng.binomial(PEEK_EVERY, p_a, size=(experiments, looks)).cumsum(axis=1)
    s_b = rng.binomial(PEEK_EVERY, p_b, size=(experiments, looks)).cumsum(axis=1)
    n = PEEK_EVERY * np.arange(1, looks + 1)
    return s_a, s_b, np.broadcast_to(n, s_a.shape)


def _sequential_rejects(s_a: np.ndarray, s_b: np.ndarray, n: np.ndarray, tau: float) -> np.ndarray:
    """Vectorised twin of `msprt_proportions` p <= alpha (checked against it below)."""
    pooled = (s_a + s_b) / (2 * n)
    variance = pooled * (1 - pooled) * 2 / n
    estimate = (s_b - s_a) / n
    t2 = tau * tau
    with np.errstate(divide="ignore", invalid="ignore"):
        llr = 0.5 * np.log(variance / (variance + t2)) + t2 * estimate**2 / (2 * variance * (variance + t2))
    return np.nan_to_num(llr, nan=-np.inf) >= math.log(1 / ALPHA)


def _naive_rejects(s_a: np.ndarray, s_b: np.ndarray, n: np.ndarray) -> np.ndarray:
    pooled = (s_a + s_b) / (2 * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (s_b - s_a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    return np.abs(np.nan_to_num(z)) > norm.isf(ALPHA / 2)


def test_vectorised_simulation_agrees_with_the_library_function() -> None:
    s_a, s_b, n = _peeks(0.1, 0.12, experiments=20, looks=30, seed=11)
    tau = 0.01
    expected = np.array(
        [
            [
                msprt_proportions(int(a), int(k), int(b), int(k), tau=tau).p_value <= ALPHA
                for a, b, k in zip(ra, rb, rn, strict=True)
            ]
            for ra, rb, rn in zip(s_a, s_b, n, strict=True)
        ]
    )
    assert (expected == _sequential_rejects(s_a, s_b, n, tau)).all()


def test_peeking_every_100_outcomes_keeps_the_sequential_false_positive_rate_under_alpha() -> None:
    s_a, s_b, n = _peeks(0.10, 0.10, experiments=2_000, looks=100, seed=1)  # up to 10,000 per arm
    sequential = _sequential_rejects(s_a, s_b, n, tau=mixing_tau(0.05, 0.10)).any(axis=1).mean()
    naive = _naive_rejects(s_a, s_b, n).any(axis=1).mean()
    assert sequential <= ALPHA + 0.01
    assert naive > 0.25  # the naive z-test, read at every peek, "finds" a winner in over a quarter of A/As


@pytest.mark.parametrize("mde", [0.02, 0.2, 1.0])
def test_false_positive_rate_holds_for_any_mixing_scale(mde: float) -> None:
    s_a, s_b, n = _peeks(0.10, 0.10, experiments=1_000, looks=100, seed=2)
    assert _sequential_rejects(s_a, s_b, n, tau=mixing_tau(mde, 0.10)).any(axis=1).mean() <= ALPHA + 0.01


def test_two_point_lift_on_ten_percent_is_detected_at_planned_power() -> None:
    tau = mixing_tau(0.2, 0.10)
    unit_variance = 0.10 * 0.90 + 0.12 * 0.88
    planned = math.ceil(sequential_sample_size(0.02, unit_variance, tau=tau, power=0.8))
    fixed = math.ceil(sample_size_proportions(0.10, 0.2, power=0.8))
    assert fixed < planned < 2.2 * fixed  # the price of peeking freely
    looks = math.ceil(planned / PEEK_EVERY)
    s_a, s_b, n = _peeks(0.10, 0.12, experiments=2_000, looks=looks, seed=3)
    rejected = _sequential_rejects(s_a, s_b, n, tau)
    assert rejected[:, -1].mean() == pytest.approx(0.80, abs=0.03)  # one look at the planned n
    assert 0.80 <= rejected.any(axis=1).mean() <= 0.93  # monitoring only adds earlier detections
    rng = np.random.default_rng(5)
    s_a, s_b = rng.binomial(fixed, 0.10, size=4_000), rng.binomial(fixed, 0.12, size=4_000)
    pooled = (s_a + s_b) / (2 * fixed)
    z = (s_b - s_a) / fixed / np.sqrt(pooled * (1 - pooled) * 2 / fixed)
    assert np.mean(np.abs(z) > norm.isf(ALPHA / 2)) == pytest.approx(0.80, abs=0.025)  # fixed plan, one look


def test_confidence_sequence_is_the_inverted_test() -> None:
    variance, tau = 2e-5, 0.01
    half = confidence_half_width(variance, tau, ALPHA)
    assert log_likelihood_ratio(half, variance, tau) == pytest.approx(math.log(1 / ALPHA))
    assert always_valid_p(half * 1.01, variance, tau) < ALPHA < always_valid_p(half * 0.99, variance, tau)


def test_confidence_sequence_is_wider_than_the_fixed_interval() -> None:
    result = msprt_proportions(1_000, 10_000, 1_100, 10_000, tau=0.005)
    assert result.estimate == pytest.approx(0.01)
    se = math.sqrt(0.1 * 0.9 / 10_000 + 0.11 * 0.89 / 10_000)
    assert result.interval.high - result.interval.low > 2 * norm.isf(ALPHA / 2) * se


def test_means_version_uses_the_welch_variance() -> None:
    result = msprt_means(500, 10.0, 9.0, 400, 10.5, 16.0, tau=0.5)
    variance = 9.0 / 500 + 16.0 / 400
    assert result.p_value == pytest.approx(always_valid_p(0.5, variance, 0.5))
    assert result.interval.low == pytest.approx(0.5 - confidence_half_width(variance, 0.5, ALPHA))


def test_no_data_gives_p_of_one_and_no_interval() -> None:
    assert msprt_proportions(0, 0, 0, 0, tau=0.01).p_value == 1.0
    assert msprt_proportions(0, 100, 0, 100, tau=0.01).p_value == 1.0
    assert msprt_means(1, 1.0, 0.0, 5, 2.0, 1.0, tau=0.1).p_value == 1.0
    assert math.isnan(msprt_proportions(0, 0, 0, 0, tau=0.01).interval.low)


def test_mixing_scale_is_the_absolute_mde_with_fallbacks() -> None:
    assert mixing_tau(0.05, 0.10) == pytest.approx(0.005)
    assert mixing_tau(0.05, 0.0, 2.0) == pytest.approx(0.1)
    assert mixing_tau(0.05, 0.0) > 0


def test_sequential_power_grows_with_n() -> None:
    powers = [sequential_power(0.02, 0.2, n, tau=0.02) for n in (1_000, 5_000, 20_000)]
    assert powers == sorted(powers) and powers[-1] > 0.99
