"""Experiment counters as additive fields: three replicas' outboxes merged through a real SQLite file
equal one process's counters (counts and binary sums exactly, continuous sums to double precision);
what a replica could not write while the backend was away is written once when it is back."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from modelserve.experiments import merged
from modelserve.experiments.experiment import ExperimentCounters, parse_experiment_spec
from modelserve.experiments.outbox import Outbox
from modelserve.state.coordinator import CoordinatorUnavailable
from modelserve.state.sqlite_backend import SqliteCoordinator

SPEC = parse_experiment_spec(
    {
        "model": "fraud",
        "arms": ["1", "2", "odd|name"],
        "metric": {"name": "revenue", "kind": "continuous"},
        "guardrails": [{"name": "latency_ms", "kind": "continuous", "higher_is_better": False}],
        "segments": ["country"],
    }
)
KEY = "experiment-counts.fraud.e1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_three_replicas_outboxes_merge_to_what_one_process_counts(tmp_path: Path) -> None:
    rng = random.Random(7)
    alone = ExperimentCounters(SPEC)
    coordinators = [SqliteCoordinator(tmp_path / "state.db") for _ in range(3)]
    for coordinator in coordinators:
        await coordinator.open()
    try:
        outboxes = [
            Outbox(c, replica_id=f"replica-{i}", decision_ttl_s=60) for i, c in enumerate(coordinators)
        ]
        for i in range(3000):
            outbox = outboxes[i % 3]
            arm = SPEC.versions[rng.randrange(3)]
            value = rng.lognormvariate(3, 1.5)
            guardrails = {"latency_ms": rng.uniform(1, 50)}
            segments = {"country": rng.choice(["fr", "de", "it"])}
            alone.record_assignment(arm)
            merged.add_assignment(outbox.fields(KEY), arm)
            alone.record_outcome(arm, value, segments=segments, guardrails=guardrails)
            merged.add_outcome(outbox.fields(KEY), SPEC, arm, value, segments=segments, guardrails=guardrails)
            if i % 250 == 0:  # flushes at different moments, as on a live server
                await outbox.flush()
        for outbox in outboxes:
            await outbox.flush()
        fleet = merged.counters_from_fields(SPEC, await coordinators[0].counters(KEY))
    finally:
        for coordinator in coordinators:
            await coordinator.aclose()
    for arm in SPEC.versions:
        mine, theirs = alone.arms[arm], fleet.arms[arm]
        assert (theirs.assigned, theirs.metric.n) == (mine.assigned, mine.metric.n)  # exact
        assert math.isclose(theirs.metric.total, mine.metric.total, rel_tol=1e-12)
        assert math.isclose(theirs.metric.total_sq, mine.metric.total_sq, rel_tol=1e-12)
        assert math.isclose(
            theirs.guardrails["latency_ms"].total, mine.guardrails["latency_ms"].total, rel_tol=1e-12
        )
        for country, counter in mine.segments["country"].items():
            assert theirs.segments["country"][country].n == counter.n
            assert math.isclose(theirs.segments["country"][country].total, counter.total, rel_tol=1e-12)


@pytest.mark.anyio
async def test_binary_sums_are_exact_and_a_failed_flush_is_written_once_later(tmp_path: Path) -> None:
    binary = parse_experiment_spec({"model": "fraud", "arms": ["1", "2"], "metric": "binary"})
    coordinator = SqliteCoordinator(tmp_path / "state.db")
    await coordinator.open()
    outbox = Outbox(coordinator, replica_id="a", decision_ttl_s=60)
    for i in range(1000):
        merged.add_outcome(outbox.fields(KEY), binary, "2", i % 3 == 0, segments={}, guardrails=None)
    outbox.decision("fraud/r1", {"arm": "2"})
    await coordinator.aclose()  # the backend is away
    with pytest.raises(CoordinatorUnavailable):
        await outbox.flush()
    assert outbox.pending_decisions == 1  # kept, not lost
    await coordinator.open()
    await outbox.flush()
    await outbox.flush()  # nothing left: nothing added twice
    counters = merged.counters_from_fields(binary, await coordinator.counters(KEY))
    assert (counters.arms["2"].metric.n, counters.arms["2"].metric.successes) == (1000, 334)
    assert counters.arms["2"].metric.total == 334.0
    assert (await coordinator.take_decision("fraud/r1")).outcome == "joined"
    await coordinator.aclose()
