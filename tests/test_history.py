"""History: bounded column-wise series per version for the status page."""

from __future__ import annotations

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
