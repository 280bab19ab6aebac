"""History: bounded column-wise series per version for the status page."""

from __future__ import annotations

from pathlib import Path

from modelserve.monitoring.history import History


def test_series_are_column_wise_bounded_and_keep_gaps() -> None:
    history = History(capacity=3, max_versions=2)
    for t in range(5):
        history.append("m", "1", float(t), {"requests": t, "p99": None if t == 3 else 0.01})
    history.append("m", "2", 4.0, {"requests": 1})
    series = history.series("m")
    assert series["1"] == {"t": [2.0, 3.0, 4.0], "p99": [0.01, None, 0.01], "requests": [2, 3, 4]}
    history.append("m", "3", 5.0, {"requests": 1})
    assert set(history.series("m")) == {"2", "3"}  # the least recently fed version went


def test_shadow_agreement_in_the_history_is_per_interval(tmp_path: Path) -> None:
    """The history's agreement is the rate between two points, beside the cumulative one."""
    from modelserve import testing
    from modelserve.monitoring.service import MonitoringService
    from modelserve.serving.registry import ModelRegistry
    from modelserve.serving.repository import ModelRepository
    from modelserve.state.policies import PolicyTable
    from modelserve.state.store import MemoryStateStore
    from modelserve.telemetry.windows import SlidingWindows

    seen = {"rate": 1.0, "samples": 100}
    store = MemoryStateStore()
    repo = testing.repository(tmp_path / "models", {"m": {"1": 1}})
    windows = SlidingWindows(window_s=60, sub_windows=6)
    service = MonitoringService(
        registry=ModelRegistry(ModelRepository(repo), store),
        policies=PolicyTable(store),
        windows=windows,
        agreement=lambda model, version: (seen["rate"], seen["samples"]),
    )
    windows.record("m", "2", "shadow", 0.001)
    service.sample_history(now=1.0)
    seen.update(rate=0.75, samples=200)  # the last 100 comparisons agreed half the time
    service.sample_history(now=2.0)
    series = service.history.series("m")["2"]
    assert series["agreement"] == [None, 0.5] and series["agreement_cumulative"] == [1.0, 0.75]
