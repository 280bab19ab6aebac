"""A replica's monitoring snapshot: exported from a real monitor, read back exactly, damage left out."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from modelserve.monitoring.drift import DriftConfig
from modelserve.monitoring.histogram import SCORE_EDGES
from modelserve.monitoring.merge import merge_distributions, merge_drift
from modelserve.monitoring.monitor import Monitor, MonitorConfig
from modelserve.monitoring.outcomes import (
    ACCURACY,
    LabelCounts,
    LabelJoin,
    OutcomeTally,
    Prediction,
    summarize,
)
from modelserve.monitoring.snapshot import MonitoringSnapshot

CONFIG = MonitorConfig(drift=DriftConfig(min_samples=10))


def fed_monitor(seed: int, shift: float = 0.0) -> Monitor:
    rng = np.random.default_rng(seed)
    monitor = Monitor(config_for=lambda model: CONFIG, clock=lambda: 100.0)
    reference = rng.normal(size=(500, 3))
    monitor.set_reference("m", "1", {"x": reference}, source="file")
    inputs = rng.normal(size=(200, 3)) + shift
    outputs = {"label": (inputs[:, 0] > 0).astype(np.int64), "score": 1 / (1 + np.exp(-inputs[:, 0]))}
    monitor.submit("m", "1", {"x": inputs}, outputs)
    return monitor


def snapshot(monitor: Monitor, replica: str) -> MonitoringSnapshot:
    tally = OutcomeTally(wall_clock=lambda: 1000.0)
    tally.record_labels("m", "1", 7, 10, experiment=False)
    join = LabelJoin(tally)  # v1 served [1, 0], shadow v2 said [0, 0]; the truth [0, 0]
    join.remember("r", Prediction(model="m", version="1", kind=ACCURACY, values=np.asarray([1, 0])))
    join.add_shadow("r", "2", np.asarray([0, 0]))
    join.resolve("r", [0, 0])
    distributions, drift = monitor.export_counts()
    outcomes, slots = tally.export_counts()
    return MonitoringSnapshot(
        replica=replica, time=1.0, distributions=tuple(distributions), drift=tuple(drift),
        outcomes=tuple(outcomes), slots=tuple(slots), disagreements=tuple(join.export_disagreements()),
    )  # fmt: skip


def test_a_snapshot_reads_back_equal_through_json() -> None:
    original = snapshot(fed_monitor(1), "a")
    (primary,) = original.distributions
    assert sum(primary.classes["label"].values()) == 200 and sum(primary.histograms["score"][0]) == 200
    assert {d.kind for d in original.drift} == {"inputs"}  # outputs: no reference given
    body = json.loads(json.dumps(original.to_json()))
    assert MonitoringSnapshot.from_json(body) == original
    assert original.outcomes[0].labelled == 12 and (original.slots[0].slots, original.slots[0].counts) == (
        (100,),
        ((12,), (8,)),
    )
    (disagreed,) = original.disagreements
    assert (disagreed.primary, disagreed.shadow, disagreed.rows, disagreed.shadow_right) == ("1", "2", 1, 1)
    older = {key: value for key, value in body.items() if key != "disagreements"}  # an older release's
    assert MonitoringSnapshot.from_json(older) == replace(original, disagreements=())


EMPTY = {"replica": "a", "time": 1, "distributions": [], "drift": [], "outcomes": [], "slots": []}


@pytest.mark.parametrize(
    "body",
    [None, [], "x", {}, {"replica": 1, "time": 0}, {**EMPTY, "time": "soon"},
     {**EMPTY, "distributions": [["m"]]}, {**EMPTY, "outcomes": [["m", "1", "x", 1]]},
     {**EMPTY, "slots": [["m", "1", "r", 5]]}, {**EMPTY, "slots": [["m", "1", "r", [1, 2], [[3]]]]},
     {**EMPTY, "outcomes": [["m", "1", 1, 1, "x", 0, 0, 0]]},
     {**EMPTY, "distributions": [["m", "1", "p", 1, {"s": [["a"], 0]}, {}]]},
     {**EMPTY, "drift": [["m", "1", "inputs", "f", "file", "cols", 1, [], []]]}],
)  # fmt: skip
def test_a_damaged_snapshot_is_left_out_not_raised(body: Any) -> None:
    assert MonitoringSnapshot.from_json(body) is None
    assert MonitoringSnapshot.from_json(EMPTY) is not None


def test_windows_add_only_under_the_same_reference() -> None:
    same = [("a", snapshot(fed_monitor(1), "a")), ("b", snapshot(fed_monitor(2, shift=1.0), "b"))]
    drift = [(r, d) for r, s in same for d in s.drift if d.kind == "inputs"]
    merged = merge_drift(drift, CONFIG, prefer="a")
    # Each monitor drew its own reference: two fingerprints, b is kept apart.
    assert merged["not_mergeable"] == [
        {"replica": "b", "fingerprint": drift[1][1].fingerprint, "source": "file"}
    ]
    assert all(c["samples"] == 200 for c in merged["columns"])
    twin = snapshot(fed_monitor(1), "c")  # same reference rows: same fingerprint, windows add
    drift.append(("c", next(d for d in twin.drift if d.kind == "inputs")))
    merged = merge_drift(drift, CONFIG, prefer="a")
    assert merged["reference"]["replicas"] == ["a", "c"] and all(
        c["samples"] == 400 for c in merged["columns"]
    )
    classes = merge_distributions([s.distributions[0] for _, s in same], SCORE_EDGES)
    assert classes["rows"] == 400 and sum(classes["classes"]["label"].values()) == 400


def test_regression_errors_of_two_replicas_merge_exactly_through_their_snapshots() -> None:
    rng = np.random.default_rng(7)
    errors = [rng.normal(0.3, 2.0, size=n) for n in (137, 59)]
    merged = LabelCounts()
    for part in errors:
        tally = OutcomeTally()
        tally.record_errors("m", "1", part, experiment=False)
        (counts,), _ = tally.export_counts()
        body = json.loads(json.dumps(MonitoringSnapshot(replica="r", time=1.0, outcomes=(counts,)).to_json()))
        read = MonitoringSnapshot.from_json(body)
        assert read is not None
        (o,) = read.outcomes
        merged.merge(LabelCounts(o.labelled, o.correct, o.valued, o.abs_mean, o.abs_m2, o.sq_sum))
    whole = OutcomeTally()
    whole.record_errors("m", "1", np.concatenate(errors), experiment=False)
    fleet, alone = summarize("m", "1", merged), whole.summary("m", "1")
    assert fleet.kind == alone.kind == "error" and fleet.samples == alone.samples == 196
    assert fleet.mean_abs_error == pytest.approx(alone.mean_abs_error, rel=1e-12)
    assert fleet.rmse == pytest.approx(alone.rmse, rel=1e-12)
    assert fleet.abs_error_interval is not None and alone.abs_error_interval is not None
    assert fleet.abs_error_interval.low == pytest.approx(alone.abs_error_interval.low, rel=1e-12)


def test_a_day_of_label_slots_is_bounded_and_reads_back_exactly() -> None:
    clock = [1.7e9]
    tally = OutcomeTally(wall_clock=lambda: clock[0])
    for slot in range(8640 + 100):  # labels in every 10 s slot for longer than a day: the oldest go
        clock[0] = 1.7e9 + 10 * slot
        for version in ("1", "2"):
            tally.record_labels("m", version, slot % 4, 5, experiment=False)
    _, slots = tally.export_counts()
    snapshot = MonitoringSnapshot(replica="a", time=1.0, slots=tuple(slots))
    body = json.dumps(snapshot.to_json())
    assert [len(series.slots) for series in slots] == [8640, 8640]
    assert len(body) < 200_000  # two series of a day: about 160 kB
    assert MonitoringSnapshot.from_json(json.loads(body)) == snapshot
