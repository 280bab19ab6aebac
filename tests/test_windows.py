"""Sliding per-version windows: counts, rates, quantiles, expiry, merging and thread safety."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

from modelserve.telemetry.windows import RELATIVE_ERROR, SlidingWindows, WindowStats


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_empty_series_has_no_rates_and_no_quantiles() -> None:
    stats = SlidingWindows(clock=Clock()).snapshot("fraud", "1", "primary")
    assert stats == WindowStats.empty(60.0)
    assert stats.error_rate is None and stats.p95 is None


def test_counts_errors_timeouts_and_rates() -> None:
    windows = SlidingWindows(clock=Clock())
    for i in range(200):
        windows.record("fraud", "2", "primary", 0.010, error=i % 20 == 0, timeout=i % 50 == 0)
    stats = windows.snapshot("fraud", "2", "primary")
    assert (stats.requests, stats.errors, stats.timeouts) == (200, 10, 4)
    assert stats.error_rate == pytest.approx(0.05)
    assert stats.timeout_rate == pytest.approx(0.02)


def test_roles_and_versions_are_separate_series() -> None:
    windows = SlidingWindows(clock=Clock())
    windows.record("fraud", "1", "primary", 0.01)
    windows.record("fraud", "2", "shadow", 0.02)
    assert windows.snapshot("fraud", "1", "shadow").requests == 0
    assert windows.snapshot("fraud", "2", "shadow").requests == 1
    assert windows.keys() == [("fraud", "1", "primary"), ("fraud", "2", "shadow")]


def test_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        SlidingWindows(clock=Clock()).record("fraud", "1", "canary", 0.01)


def test_quantiles_are_within_two_percent_of_the_sample_at_that_rank() -> None:
    rng = np.random.default_rng(7)
    latencies = rng.lognormal(mean=-4.0, sigma=0.8, size=5000)
    windows = SlidingWindows(clock=Clock())
    for value in latencies:
        windows.record("fraud", "1", "primary", float(value))
    stats = windows.snapshot("fraud", "1", "primary")
    ordered = np.sort(latencies)
    for q, got in ((0.50, stats.p50), (0.95, stats.p95), (0.99, stats.p99)):
        exact = ordered[math.floor(q * (len(ordered) - 1))]
        assert got == pytest.approx(exact, rel=RELATIVE_ERROR)


def test_old_sub_windows_expire_and_short_windows_see_only_recent_ones() -> None:
    clock = Clock(1000.0)
    windows = SlidingWindows(window_s=60, sub_windows=10, clock=clock)
    windows.record("fraud", "1", "primary", 0.01)  # sub-window [996, 1002)
    clock.now = 1010.0
    windows.record("fraud", "1", "primary", 0.01, error=True)  # sub-window [1008, 1014)
    assert windows.snapshot("fraud", "1", "primary").requests == 2
    # A window covers the current partial sub-window plus ceil(window_s / 6) full ones before it.
    assert windows.snapshot("fraud", "1", "primary", window_s=6).requests == 1  # [1002, 1014)
    assert windows.snapshot("fraud", "1", "primary", window_s=12).requests == 2  # [996, 1014)
    clock.now = 1067.0  # [1062, 1068) is current: [996, 1002) is more than 66 s old
    stats = windows.snapshot("fraud", "1", "primary")
    assert (stats.requests, stats.errors) == (1, 1)
    assert windows.snapshot("fraud", "1", "primary", now=1200.0).requests == 0
    clock.now = 1061.0  # 61 s old but within the partial sub-window's allowance: still counted
    assert windows.snapshot("fraud", "1", "primary").requests == 2


def test_windows_longer_than_the_ring_are_clamped() -> None:
    windows = SlidingWindows(window_s=60, clock=Clock())
    windows.record("fraud", "1", "primary", 0.01)
    assert windows.snapshot("fraud", "1", "primary", window_s=3600).window_s == 60.0


def test_memory_stays_bounded_and_totals_are_cumulative() -> None:
    clock = Clock(0.0)
    windows = SlidingWindows(window_s=10, sub_windows=5, clock=clock)
    for second in range(1000):
        clock.now = float(second)
        windows.record("fraud", "1", "primary", 0.002, error=second % 10 == 0)
    assert windows.snapshot("fraud", "1", "primary").requests == 12  # [988, 1000): 10 s + the current 2 s
    totals = windows.totals("fraud", "1", "primary")
    assert (totals.requests, totals.errors, totals.timeouts) == (1000, 100, 0)
    assert totals.mean_latency_s == pytest.approx(0.002)
    assert windows.totals("fraud", "9", "primary").requests == 0


def test_requests_without_latency_count_but_add_no_quantile() -> None:
    windows = SlidingWindows(clock=Clock())
    windows.record("fraud", "1", "shadow", None, timeout=True)
    stats = windows.snapshot("fraud", "1", "shadow")
    assert (stats.requests, stats.timeouts, stats.p50) == (1, 1, None)


def test_records_from_many_threads_are_all_counted() -> None:
    windows = SlidingWindows(clock=Clock())
    start = threading.Barrier(4)

    def worker() -> None:
        start.wait()
        for _ in range(5000):
            windows.record("fraud", "2", "shadow", 0.003)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert windows.snapshot("fraud", "2", "shadow").requests == 20000


def test_forget_drops_a_versions_series() -> None:
    windows = SlidingWindows(clock=Clock())
    windows.record("fraud", "1", "primary", 0.01)
    windows.record("fraud", "1", "shadow", 0.01)
    windows.forget("fraud", "1")
    assert windows.keys() == []


def test_compute_times_go_into_a_histogram_of_their_own() -> None:
    windows = SlidingWindows(clock=Clock())
    for _ in range(10):
        windows.record("fraud", "2", "shadow", 0.050, compute_s=0.002)  # a preempted shadow thread
    windows.record("fraud", "2", "shadow", 0.050)  # no CPU time measured: counted, not in compute
    assert windows.histogram("fraud", "2", "shadow").count == 11
    compute = windows.compute_histogram("fraud", "2", "shadow")
    assert compute.count == 10 and compute.quantile(0.95) == pytest.approx(0.002, rel=RELATIVE_ERROR)
    assert windows.histogram("fraud", "2", "shadow").quantile(0.5) == pytest.approx(0.05, rel=RELATIVE_ERROR)
