"""Fleet-wide gate data: three replicas' windows merged exactly; a silent replica makes gates hold."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelserve.fleet.windows import FleetWindows
from modelserve.rollout.gates import INCONCLUSIVE, PASS, evaluate_gates
from modelserve.rollout.plan import plan_from_dict
from modelserve.rollout.sample import Sample
from modelserve.state.sqlite_backend import SqliteCoordinator
from modelserve.telemetry.windows import SlidingWindows

PLAN = {
    "name": "p",
    "gates": [{"name": "errors", "metric": "error_rate", "mode": "absolute", "threshold": 0.05}],
    "stages": [{"name": "canary-5", "weight": 5, "min_duration_s": 0, "min_samples": 100}],
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_canary_spread_over_three_replicas_passes_on_their_sum_only(tmp_path: Path) -> None:
    replicas = []
    for name in ("a", "b", "c"):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        windows = SlidingWindows(window_s=60, sub_windows=12)
        for i in range(40):  # each replica alone: 40 < the stage's 100
            windows.record("fraud", "2", "primary", 0.001 * (1 + i % 5))
            windows.record("fraud", "1", "primary", 0.001)
        fleet = FleetWindows(coordinator=coordinator, windows=windows, replica_id=name)
        await fleet.publish()
        await coordinator.put_snapshot("replicas", name, {"models": {}}, ttl_s=30)
        replicas.append((coordinator, windows, fleet))
    stage = plan_from_dict(PLAN, where="test").stages[0]
    leader_windows, leader = replicas[0][1], replicas[0][2]
    alone = leader_windows.snapshot("fraud", "2", "primary", 60)
    assert alone.requests == 40
    (verdict,) = evaluate_gates(stage, sample(leader_windows, "2"), sample(leader_windows, "1"))
    assert verdict.verdict == INCONCLUSIVE
    await leader.refresh()
    together = leader.snapshot("fraud", "2", "primary", 60)
    assert together.requests == 120 and together.errors == 0
    histogram = leader_windows.histogram("fraud", "2", "primary", 60)
    assert together.p95 is not None and together.p95 >= histogram.quantile(0.5)  # type: ignore[operator]
    assert sample(leader, "2").requests == 120 and sample(leader, "2").latency.count == 120
    (verdict,) = evaluate_gates(stage, sample(leader, "2"), sample(leader, "1"))
    assert verdict.verdict == PASS

    # A replica that still serves but stopped publishing its windows: no verdict from partial data.
    await replicas[0][0].put_snapshot("replicas", "d", {"models": {}}, ttl_s=30)
    await leader.refresh()
    assert leader.missing == ["d"]
    held = leader.snapshot("fraud", "2", "primary", 60)
    assert held.requests == 0
    (verdict,) = evaluate_gates(stage, sample(leader, "2"), sample(leader, "1"))
    assert verdict.verdict == INCONCLUSIVE
    for coordinator, _, _ in replicas:
        await coordinator.aclose()


def sample(windows: Any, version: str) -> Sample:
    return Sample.from_windows(windows, "fraud", version, "primary", 60)


@pytest.mark.anyio
async def test_compute_times_merge_over_replicas_like_latencies(tmp_path: Path) -> None:
    """Shadow stages compare model-run CPU times: the leader's comes from every replica's runs."""
    fleets = []
    for index, name in enumerate(("a", "b", "c")):
        coordinator = SqliteCoordinator(tmp_path / "state.db")
        await coordinator.open()
        windows = SlidingWindows(window_s=60, sub_windows=12)
        for _ in range(30):  # each replica's runs take another time: a, b, c = 1, 2, 4 ms
            windows.record("fraud", "2", "shadow", 0.01, compute_s=0.001 * 2**index)
        fleet = FleetWindows(coordinator=coordinator, windows=windows, replica_id=name)
        await fleet.publish()
        await coordinator.put_snapshot("replicas", name, {"models": {}}, ttl_s=30)
        fleets.append((coordinator, fleet))
    leader = fleets[0][1]
    alone = leader.windows.compute_histogram("fraud", "2", "shadow", 60)
    assert alone.count == 30 and alone.quantile(0.99) == pytest.approx(0.001, rel=0.03)
    await leader.refresh()
    merged = leader.compute_histogram("fraud", "2", "shadow", 60)
    assert merged.count == 90
    assert merged.quantile(0.2) == pytest.approx(0.001, rel=0.03)
    assert merged.quantile(0.5) == pytest.approx(0.002, rel=0.03)
    assert merged.quantile(0.99) == pytest.approx(0.004, rel=0.03)
    assert leader.histogram("fraud", "2", "shadow", 60).count == 90  # latencies still separate
    shadow = Sample.from_windows(leader, "fraud", "2", "shadow", 60, compute=True)
    assert shadow.requests == 90 and shadow.latency.count == 90
    for coordinator, _ in fleets:
        await coordinator.aclose()
