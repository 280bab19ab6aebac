"""FeedbackJoin: outcomes reach the arm (and bandit) that served the request; nothing is lost silently."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelserve.errors import RequestError
from modelserve.experiments.bandits import ThompsonSampling
from modelserve.experiments.experiment import ExperimentCounters, parse_experiment_spec
from modelserve.experiments.feedback import FeedbackJoin
from modelserve.experiments.report import report
from modelserve.routing.decision import RouteDecision


class FakeClock:
    """A controllable timer for the TTL cache (time is an input here, not the thing under test)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _counters(policy: str = "fixed", **changes: Any) -> ExperimentCounters:
    data: dict[str, Any] = {
        "model": "fraud",
        "arms": ["1", "2"],
        "metric": "binary",
        "policy": policy,
        "segments": ["country"],
        "guardrails": [{"name": "latency_ms", "kind": "continuous", "higher_is_better": False}],
    }
    data.update(changes)
    return ExperimentCounters(parse_experiment_spec(data))


def _decision(arm: str, reason: str = "experiment", model: str = "fraud") -> RouteDecision:
    return RouteDecision(model=model, version=arm, reason=reason, arm=arm)


def test_outcome_updates_the_arm_that_served_the_request() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    assert join.record_decision("r1", _decision("2"), segments={"country": "fr"})
    outcome = join.record_outcome("r1", 1, guardrails={"latency_ms": 4.0})
    assert outcome is not None and (outcome.arm, outcome.value, outcome.segments) == (
        "2",
        1.0,
        {"country": "fr"},
    )
    arm = counters.arms["2"]
    assert (arm.assigned, arm.metric.n, arm.metric.successes) == (1, 1, 1)
    assert arm.segments["country"]["fr"].n == 1 and arm.guardrails["latency_ms"].mean == 4.0
    assert counters.arms["1"].metric.n == 0


def test_outcome_segments_override_decision_segments() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    join.record_decision("r1", _decision("1"), segments={"country": "fr"})
    outcome = join.record_outcome("r1", 0, segments={"country": "de"})
    assert outcome is not None and outcome.segments == {"country": "de"}
    assert set(counters.arms["1"].segments["country"]) == {"de"}


def test_unknown_ids_are_counted_not_dropped_silently() -> None:
    join = FeedbackJoin()
    join.attach(_counters())
    assert join.record_outcome("never-seen", 1) is None
    assert join.unknown_outcomes == 1 and join.stats()["unknown_outcomes"] == 1


def test_late_outcomes_after_the_ttl_count_as_unknown() -> None:
    clock = FakeClock()
    join, counters = FeedbackJoin(ttl=60.0, timer=clock), _counters()
    join.attach(counters)
    join.record_decision("r1", _decision("1"))
    clock.now = 61.0
    assert join.record_outcome("r1", 1) is None
    assert join.unknown_outcomes == 1 and counters.arms["1"].metric.n == 0


def test_duplicate_outcomes_are_counted_and_ignored() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    join.record_decision("r1", _decision("1"))
    assert join.record_outcome("r1", 1) is not None
    assert join.record_outcome("r1", 0) is None
    assert join.duplicate_outcomes == 1 and counters.arms["1"].metric.n == 1


def test_size_bound_evicts_and_counts_old_decisions() -> None:
    join = FeedbackJoin(maxsize=2)
    join.attach(_counters())
    for i in range(3):
        join.record_decision(f"r{i}", _decision("1"))
    assert join.evicted_decisions == 1 and join.pending == 2
    assert join.record_outcome("r0", 1) is None and join.unknown_outcomes == 1


def test_non_experiment_decisions_are_not_recorded() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    assert not join.record_decision("r1", _decision("1", reason="override"))
    assert not join.record_decision("r2", _decision("1", model="other"))
    assert not join.record_decision("r3", _decision("9"))
    assert counters.arms["1"].assigned == 0
    assert join.record_outcome("r1", 1) is None and join.unknown_outcomes == 1


def test_invalid_value_raises_and_leaves_the_id_open_for_a_retry() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    join.record_decision("r1", _decision("1"))
    with pytest.raises(RequestError):
        join.record_outcome("r1", 7)
    assert counters.arms["1"].metric.n == 0
    assert join.record_outcome("r1", 1) is not None


def test_bandit_feedback_always_updates_the_arm_that_served_it() -> None:
    counters = _counters(policy="thompson")
    bandit = ThompsonSampling(counters.spec.versions, rng=np.random.default_rng(0), min_outcomes=5)
    join = FeedbackJoin()
    join.attach(counters, bandit)
    rng = np.random.default_rng(1)
    served: dict[str, str] = {}
    for i in range(400):
        arm = bandit.choose()
        served[f"r{i}"] = arm
        join.record_decision(f"r{i}", _decision(arm, reason="bandit"))
    ids = list(served)
    rng.shuffle(ids)  # outcomes arrive out of order, while the bandit keeps reweighting
    for request_id in ids:
        outcome = join.record_outcome(request_id, int(served[request_id] == "2"))
        assert outcome is not None and outcome.arm == served[request_id]
    expected = [sum(1 for a in served.values() if a == arm) for arm in bandit.arms]
    assert bandit.n == expected and bandit.total == [0.0, float(expected[1])]
    assert [counters.arms[a].metric.n for a in bandit.arms] == expected


def test_experiment_decisions_do_not_move_an_attached_bandit() -> None:
    counters = _counters(policy="thompson")
    bandit = ThompsonSampling(counters.spec.versions, rng=np.random.default_rng(0))
    join = FeedbackJoin()
    join.attach(counters, bandit)
    join.record_decision("r1", _decision("1", reason="experiment"))
    join.record_outcome("r1", 1)
    assert bandit.n == [0, 0] and counters.arms["1"].metric.n == 1


def test_detached_experiment_turns_pending_outcomes_into_unknown() -> None:
    join = FeedbackJoin()
    join.attach(_counters())
    join.record_decision("r1", _decision("1"))
    join.detach("fraud")
    assert join.record_outcome("r1", 1) is None and join.unknown_outcomes == 1


def test_outcomes_through_the_join_move_the_report() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    for i in range(50):
        join.record_decision(f"r{i}", _decision("1" if i % 2 else "2"))
        join.record_outcome(f"r{i}", i % 3 == 0)
    result = report(counters.spec, counters)
    assert [a.n for a in result.arms] == [25, 25] and [a.assigned for a in result.arms] == [25, 25]


def test_a_decision_keeps_only_the_segments_its_spec_names_cut_short() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    huge = "x" * 1_000_000
    segments = {"country": huge, **{f"junk{i}": huge for i in range(10)}}
    assert join.record_decision("r1", _decision("2"), segments=segments)
    outcome = join.record_outcome("r1", 1)
    assert outcome is not None and set(outcome.segments) == {"country"}
    assert len(outcome.segments["country"]) == 128


def test_a_reused_request_id_never_moves_an_outcome_nor_reopens_a_counted_id() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    assert join.record_decision("victim", _decision("1"))
    assert not join.record_decision("victim", _decision("2"))  # an attacker's request reusing the id
    outcome = join.record_outcome("victim", 1)
    assert outcome is not None and outcome.arm == "1"
    assert not join.record_decision("victim", _decision("2"))  # reopening a counted id fails too
    assert join.record_outcome("victim", 1) is None
    assert (counters.arms["1"].metric.n, counters.arms["2"].metric.n) == (1, 0)
    assert join.stats()["reused_ids"] == 2 and join.duplicate_outcomes == 1


def test_one_targeting_key_repeated_counts_one_assignment_and_cannot_force_srm() -> None:
    join, counters = FeedbackJoin(), _counters()
    join.attach(counters)
    for i in range(5000):  # one client hammering with one user id, always served by arm 2
        decision = RouteDecision(
            model="fraud", version="2", reason="experiment", arm="2", targeting_key="bot"
        )
        join.record_decision(f"bot-{i}", decision)
    for i in range(200):  # 200 real users split evenly
        arm = "1" if i % 2 else "2"
        decision = RouteDecision(
            model="fraud", version=arm, reason="experiment", arm=arm, targeting_key=f"u{i}"
        )
        join.record_decision(f"user-{i}", decision)
    assert (counters.arms["1"].assigned, counters.arms["2"].assigned) == (100, 101)
    srm = report(counters.spec, counters).srm
    assert srm is not None and not srm.flagged
