"""Drift: PSI and Jensen-Shannon against direct numpy/scipy computations; shift detection; bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from modelserve.monitoring.drift import (
    DriftConfig,
    DriftTracker,
    Reference,
    js_distance,
    psi,
    quantile_edges,
)


def direct_psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, floor: float = 1e-4) -> float:
    """PSI written out from its definition: decile bins of the reference, floored proportions."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1], method="lower"))
    p = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=bins + 1) / reference.size
    q = np.bincount(np.searchsorted(edges, current, side="right"), minlength=bins + 1) / current.size
    p, q = np.maximum(p, floor), np.maximum(q, floor)
    return float(np.sum((q - p) * np.log(q / p)))


def test_psi_of_a_tracker_equals_the_direct_computation() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(3000, 2))
    current = np.column_stack([rng.normal(0.3, 1.2, 800), rng.exponential(1.0, 800)])
    tracker = DriftTracker(["a", "b"], DriftConfig(min_samples=100), now=0.0)
    tracker.set_reference(Reference(["a", "b"], reference), "file")
    tracker.add(current, now=1.0)
    results = {r.column: r for r in tracker.report(now=2.0)}
    for j, column in enumerate(["a", "b"]):
        assert results[column].psi == pytest.approx(direct_psi(reference[:, j], current[:, j]), rel=1e-12)
        assert results[column].samples == 800 and results[column].reference_samples == 3000


def test_js_distance_equals_scipy() -> None:
    rng = np.random.default_rng(2)
    for _ in range(20):
        a, b = rng.integers(0, 50, 12), rng.integers(0, 50, 12)
        a[rng.integers(0, 12)] = 0  # empty bins are allowed
        assert js_distance(a, b) == pytest.approx(float(jensenshannon(a, b, base=2)), abs=1e-12)


def test_psi_is_zero_for_identical_distributions_and_symmetric_in_sign() -> None:
    counts = np.array([5, 10, 0, 20])
    assert psi(counts, counts) == 0.0
    assert psi(counts, counts[::-1]) > 0


def test_discrete_features_get_one_bin_per_value() -> None:
    values = np.array([0, 0, 0, 1, 1, 2, 3, 3, 3, 3], dtype=float)
    edges = quantile_edges(values)
    assert set(edges.tolist()) <= {0.0, 1.0, 2.0, 3.0}
    reference = Reference(["x"], values.reshape(-1, 1))
    assert reference.counts.sum() == 10


def test_nan_values_have_their_own_bin() -> None:
    reference = Reference(["x"], np.arange(100, dtype=float).reshape(-1, 1))
    counts = reference.count(np.array([[np.nan], [5.0]]))
    assert counts[0, -1] == 1 and counts.sum() == 2


def run_window(scale: float, seed: int, rows: int = 600) -> dict[str, float | None]:
    rng = np.random.default_rng(seed)
    config = DriftConfig(
        min_samples=500, window_s=60, sub_windows=6, reference_rows=2000, reference_period_s=0
    )
    tracker = DriftTracker(["f0", "f1", "f2"], config, now=0.0)
    tracker.add(rng.normal(size=(2000, 3)), now=0.0)  # captured from live traffic
    assert tracker.reference is not None and tracker.reference_source == "live"
    current = rng.normal(size=(rows, 3))
    current[:, 1] *= scale
    for start in range(0, rows, 50):  # one window's worth of small batches
        tracker.add(current[start : start + 50], now=10.0 + start / rows * 40)
    return {r.column: (r.psi if r.drifted is not None else None) for r in tracker.report(now=55.0)} | {
        "drifted": [r.column for r in tracker.report(now=55.0) if r.drifted]  # type: ignore[dict-item]
    }


def test_scaling_one_feature_raises_its_drift_above_threshold_within_one_window() -> None:
    result = run_window(scale=2.0, seed=3)
    assert result["drifted"] == ["f1"]


def test_unshifted_traffic_stays_below_threshold_in_repeated_runs() -> None:
    worst = 0.0
    for seed in range(30):
        result = run_window(scale=1.0, seed=100 + seed)
        assert result["drifted"] == []
        worst = max(worst, *(v for k, v in result.items() if k != "drifted" and isinstance(v, float)))
    assert worst < DriftConfig().threshold / 2


def test_too_few_rows_is_not_enough_data_never_a_pass() -> None:
    tracker = DriftTracker(["x"], DriftConfig(min_samples=500), now=0.0)
    tracker.set_reference(Reference(["x"], np.random.default_rng(0).normal(size=(1000, 1))), "file")
    tracker.add(np.full((10, 1), 100.0), now=1.0)  # wildly shifted, but only 10 rows
    (result,) = tracker.report(now=2.0)
    assert result.drifted is None and result.psi is not None and result.psi > 1


def test_old_sub_windows_leave_the_window() -> None:
    tracker = DriftTracker(["x"], DriftConfig(min_samples=10, window_s=60, sub_windows=6), now=0.0)
    tracker.set_reference(Reference(["x"], np.arange(100, dtype=float).reshape(-1, 1)), "file")
    tracker.add(np.full((50, 1), 1000.0), now=1.0)
    assert tracker.report(now=2.0)[0].drifted is True
    assert tracker.report(now=200.0)[0].samples == 0


def test_live_reference_freezes_after_its_period_with_enough_rows() -> None:
    config = DriftConfig(min_samples=100, reference_rows=10_000, reference_period_s=30)
    tracker = DriftTracker(["x"], config, now=0.0)
    tracker.add(np.ones((150, 1)), now=5.0)
    assert tracker.reference is None
    tracker.add(np.ones((10, 1)), now=31.0)
    assert tracker.reference is not None and tracker.reference.rows == 160


def test_memory_is_bounded_under_a_million_rows_of_distinct_values() -> None:
    config = DriftConfig(
        min_samples=100, reference_rows=2000, reference_period_s=10, window_s=60, sub_windows=6
    )
    tracker = DriftTracker(["a", "b"], config, now=0.0)
    values = np.arange(1_000_000, dtype=np.float64)  # every value distinct
    for i, start in enumerate(range(0, values.size, 10_000)):
        chunk = values[start : start + 10_000]
        tracker.add(np.column_stack([chunk, -chunk]), now=i * 0.5)
    assert tracker.reference is not None and tracker.reference.rows == 2000  # a sample of the 10 s
    assert tracker.reference.edges[0][0] > 10_000 and tracker.reference.edges[0][-1] < 200_000
    assert tracker.window is not None and tracker.window.counts.nbytes <= 7 * 2 * 11 * 8
    assert all(edges.size <= 9 for edges in tracker.reference.edges)
