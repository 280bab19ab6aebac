"""The one histogram type: log buckets with a bounded relative error, mergeable, bounded in memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelserve.telemetry.histogram import RELATIVE_ERROR, LogHistogram


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=100.0), min_size=1, max_size=300), st.floats(0.0, 1.0))
def test_any_quantile_is_within_the_relative_error(values: list[float], q: float) -> None:
    histogram = LogHistogram()
    for value in values:
        histogram.add(value)
    exact = sorted(values)[math.floor(q * (len(values) - 1))]
    got = histogram.quantile(q)
    assert got is not None
    assert abs(got - exact) <= RELATIVE_ERROR * exact * (1 + 1e-9)


def test_zero_latency_counts_in_the_zero_bucket() -> None:
    histogram = LogHistogram()
    histogram.add(0.0, count=3)
    histogram.add(-1e-6)
    assert histogram.quantile(0.99) == 0.0


def test_histograms_merge_exactly() -> None:
    left, right, both = LogHistogram(), LogHistogram(), LogHistogram()
    for i in range(1, 500):
        value = i * 0.0007
        (left if i % 3 else right).add(value)
        both.add(value)
    left.merge(right)
    assert left.buckets == both.buckets and left.count == both.count
    assert left.quantile(0.9) == both.quantile(0.9)


def test_histogram_quantiles_are_within_five_percent_of_exact_percentiles() -> None:
    values = np.random.default_rng(1).lognormal(mean=-7, sigma=1.0, size=20_000)
    histogram = LogHistogram()
    for value in values:
        histogram.add(float(value))
    for q in (0.5, 0.95, 0.99):
        assert histogram.quantile(q) == pytest.approx(float(np.quantile(values, q)), rel=0.05)
    assert histogram.maximum == values.max()


def test_zeros_nan_and_outliers_are_counted_and_quantile_one_is_the_maximum() -> None:
    histogram = LogHistogram()
    for value in (0.0, 0.0, 0.0, 1e-9, 5e6, float("nan")):
        histogram.add(value)
    assert (histogram.count, histogram.zeros) == (6, 4)
    assert histogram.quantile(0.5) == 0.0
    assert histogram.quantile(1.0) == 5e6
    assert LogHistogram().quantile(0.5) is None
    infinite = LogHistogram()
    infinite.add(float("inf"))
    assert infinite.quantile(0.5) == float("inf")


def test_memory_grows_with_orders_of_magnitude_not_with_values() -> None:
    histogram = LogHistogram()
    for value in np.random.default_rng(3).uniform(-9, 9, size=100_000):
        histogram.add(float(10.0**value))
    assert histogram.count == 100_000
    assert len(histogram.buckets) <= math.ceil(18 * math.log(10) / math.log(1.02 / 0.98)) + 1


def test_cumulative_counts_for_prometheus_buckets() -> None:
    histogram = LogHistogram()
    for value in (0.0, 0.00003, 0.0004, 0.0004, 2.0):
        histogram.add(value)
    assert histogram.cumulative_counts([0.00001, 0.00005, 0.0005, 1.0, 2.5]) == [1, 2, 4, 4, 5, 5]
    assert histogram.total == pytest.approx(2.00083)
