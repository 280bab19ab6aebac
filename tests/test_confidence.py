"""Confidence sequences: exact order statistics, and coverage that survives looking after every batch."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelserve.rollout.confidence import (
    min_samples_for_quantile,
    order_statistic,
    quantile_interval,
    rate_difference_interval,
    rate_interval,
)
from modelserve.telemetry.windows import LatencyHistogram


def histogram_of(values: np.ndarray) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(float(value))
    return histogram


def test_order_statistics_walk_the_histogram_exactly() -> None:
    histogram = histogram_of(np.array([0.001, 0.002, 0.004, 0.008]))
    values = [order_statistic(histogram, k) for k in range(1, 5)]
    for got, want in zip(values, (0.001, 0.002, 0.004, 0.008), strict=True):
        assert got == pytest.approx(want, rel=0.02)
    with pytest.raises(ValueError):
        order_statistic(histogram, 5)


def test_a_quantile_needs_five_values_expected_beyond_it() -> None:
    assert [min_samples_for_quantile(q) for q in (0.95, 0.99, 0.5)] == [100, 500, 10]


def test_too_few_samples_leave_the_upper_bound_of_a_high_quantile_open() -> None:
    bounds = quantile_interval(histogram_of(np.linspace(0.001, 0.002, 50)), 0.95, alpha=0.05)
    assert bounds.high is None and bounds.estimate is not None


def test_quantile_sequence_covers_the_true_p95_at_every_look() -> None:
    # 400 runs of 40 looks each (50 new values per look): how often does ANY look exclude the truth?
    rng = np.random.default_rng(7)
    true_p95 = math.exp(0.5 * 1.6448536)  # lognormal(0, 0.5)
    missed = 0
    for _ in range(400):
        histogram = LatencyHistogram()
        for _look in range(40):
            for value in np.exp(0.5 * rng.standard_normal(50)):
                histogram.add(float(value))
            bounds = quantile_interval(histogram, 0.95, alpha=0.05)
            if (bounds.low is not None and bounds.low > true_p95) or (
                bounds.high is not None and bounds.high < true_p95
            ):
                missed += 1
                break
    assert missed / 400 <= 0.05 + 2 * math.sqrt(0.05 * 0.95 / 400)


def test_rate_sequences_stay_valid_under_continuous_peeking() -> None:
    rng = np.random.default_rng(3)
    runs, looks, step, p = 400, 50, 40, 0.05
    events = rng.binomial(step, p, size=(runs, looks)).cumsum(axis=1)
    base = rng.binomial(step, p, size=(runs, looks)).cumsum(axis=1)
    one_missed = two_missed = 0
    for run in range(runs):
        one = two = False
        for look in range(looks):
            n = step * (look + 1)
            single = rate_interval(int(events[run, look]), n, alpha=0.05, tau=0.02)
            one |= not (single.low or 0.0) <= p <= (single.high or 1.0)
            diff = rate_difference_interval(
                int(events[run, look]), n, int(base[run, look]), n, alpha=0.05, tau=0.02
            )
            two |= not (diff.low or 0.0) <= 0.0 <= (diff.high or 0.0)
        one_missed += one
        two_missed += two
    # Ville's bound, up to simulation error (two standard errors of a 5 % rate over 400 runs); a
    # fixed-horizon 95 % interval checked at each of these 50 looks misses ~25 % of the time.
    slack = 0.05 + 2 * math.sqrt(0.05 * 0.95 / runs)
    assert one_missed / runs <= slack and two_missed / runs <= slack


def test_no_samples_give_no_estimate_and_no_bounds() -> None:
    assert rate_interval(0, 0, alpha=0.05, tau=0.01).estimate is None
    assert quantile_interval(LatencyHistogram(), 0.95, alpha=0.05).low is None


@pytest.mark.parametrize(("variance", "tau", "alpha"), [(1e-4, 0.01, 0.05), (0.02, 0.5, 0.01), (3, 0.1, 0.1)])
def test_the_half_width_is_the_experiments_sequence(variance: float, tau: float, alpha: float) -> None:
    from modelserve.experiments.sequential import confidence_half_width as theirs
    from modelserve.rollout.confidence import confidence_half_width as ours

    assert ours(variance, tau, alpha) == pytest.approx(theirs(variance, tau, alpha))
