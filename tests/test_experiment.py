"""Experiment specs parse strictly; counters stream, validate and round-trip through JSON."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from modelserve.errors import ConfigError, RequestError
from modelserve.experiments.experiment import ExperimentCounters, ExperimentSpec, parse_experiment_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _spec(**changes: Any) -> ExperimentSpec:
    data: dict[str, Any] = {
        "model": "fraud",
        "arms": [{"version": "1", "weight": 3}, {"version": "2", "weight": 1}],
        "metric": {"name": "conversion", "kind": "binary"},
        "guardrails": [{"name": "latency_ms", "kind": "continuous", "higher_is_better": False}],
        "mde": 0.05,
        "segments": ["country"],
    }
    data.update(changes)
    return parse_experiment_spec(data)


def test_spec_parses_normalises_weights_and_round_trips() -> None:
    spec = _spec()
    assert spec.control == "1" and spec.versions == ("1", "2")
    assert [a.weight for a in spec.arms] == [0.75, 0.25]
    assert spec.guardrails[0].higher_is_better is False
    assert (spec.alpha, spec.power, spec.policy) == (0.05, 0.8, "fixed")
    assert parse_experiment_spec(json.loads(json.dumps(spec.to_dict()))) == spec


def test_shorthands_for_arms_and_metric() -> None:
    spec = parse_experiment_spec({"model": "m", "arms": ["1", 2, "3"], "metric": "continuous"})
    assert spec.versions == ("1", "2", "3") and spec.metric.kind == "continuous"
    assert sum(a.weight for a in spec.arms) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arms": ["1"]}, "at least two"),
        ({"arms": ["1", "1"]}, "repeat"),
        ({"arms": [{"version": "1", "weight": -1}, "2"]}, "positive"),
        ({"metric": {"name": "x", "kind": "ratio"}}, "kind"),
        ({"mde": 0}, "mde"),
        ({"alpha": 1.5}, "alpha"),
        ({"power": True}, "power"),
        ({"policy": "ucb"}, "policy"),
        ({"segments": "country"}, "segments"),
        ({"colour": "red"}, "unknown"),
        ({"bandit": {"floor": 0.9}}, "floor"),
        ({"bandit": {"epsilon_decay": -1}}, "epsilon_decay"),
        ({"on_win": "party"}, "on_win"),
        ({"on_win_plan": "default"}, "needs 'on_win'"),
        ({"on_win": "rollout", "on_win_plan": "fast"}, "on_win_plan"),
        ({"on_win": "rollout", "on_win_plan": {"stages": [{"name": "a", "weight": 150}]}}, "plan.*weight"),
        ({"max_duration_s": 0}, "max_duration_s"),
        ({"auto_stop": "yes"}, "auto_stop"),
        ({"guardrails": [{"name": "conversion"}]}, "differ"),
    ],
)
def test_bad_specs_raise_config_error_naming_the_problem(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(**changes)


def test_the_on_win_plan_is_checked_at_the_start_and_survives_a_round_trip() -> None:
    plan = tomllib.loads((EXAMPLES / "plans" / "fast.toml").read_text())
    spec = _spec(on_win="rollout", on_win_plan=plan)
    assert spec.on_win_plan is not None and spec.hand_over_plan().name == "fast"
    assert [s.name for s in spec.hand_over_plan().stages] == [s["name"] for s in plan["stages"]]
    again = parse_experiment_spec(json.loads(json.dumps(spec.to_dict())))
    assert again.on_win_plan == spec.on_win_plan
    assert _spec(on_win="rollout").hand_over_plan().name == "default"


def test_missing_model_or_metric_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="model"):
        parse_experiment_spec({"arms": ["1", "2"], "metric": "binary"})
    with pytest.raises(ConfigError, match="metric"):
        parse_experiment_spec({"model": "m", "arms": ["1", "2"]})


def test_counters_stream_metric_guardrails_and_declared_segments_only() -> None:
    counters = ExperimentCounters(_spec())
    counters.record_assignment("2")
    counters.record_outcome(
        "2", 1, segments={"country": "fr", "device": "ios"}, guardrails={"latency_ms": 12.5}
    )
    counters.record_outcome("2", 0, segments={"country": "fr"}, guardrails={"latency_ms": 7.5})
    counters.record_outcome("2", True)
    arm = counters.arms["2"]
    assert arm.assigned == 1 and arm.metric.n == 3 and arm.metric.successes == 2
    assert arm.metric.mean == pytest.approx(2 / 3) and arm.metric.variance == pytest.approx(1 / 3)
    assert arm.guardrails["latency_ms"].mean == 10.0 and arm.guardrails["latency_ms"].variance == 12.5
    assert set(arm.segments) == {"country"} and arm.segments["country"]["fr"].n == 2


@pytest.mark.parametrize(
    ("value", "guardrails"),
    [(0.5, None), ("1", None), (float("nan"), None), (1, {"nope": 1}), (1, {"latency_ms": "x"})],
)
def test_invalid_outcomes_raise_request_error_and_count_nothing(value: Any, guardrails: Any) -> None:
    counters = ExperimentCounters(_spec())
    with pytest.raises(RequestError):
        counters.record_outcome("1", value, guardrails=guardrails)
    assert counters.arms["1"].metric.n == 0 and not counters.arms["1"].guardrails


def test_unknown_arm_is_a_request_error() -> None:
    with pytest.raises(RequestError):
        ExperimentCounters(_spec()).record_assignment("9")


def test_counters_round_trip_through_json() -> None:
    spec = _spec()
    counters = ExperimentCounters(spec)
    counters.record_assignment("1")
    counters.record_outcome("1", 1, segments={"country": "de"}, guardrails={"latency_ms": 3.0})
    restored = ExperimentCounters.from_dict(spec, json.loads(json.dumps(counters.to_dict())))
    assert restored.to_dict() == counters.to_dict()


def test_malformed_or_foreign_counters_are_config_errors() -> None:
    spec = _spec()
    with pytest.raises(ConfigError):
        ExperimentCounters.from_dict(spec, {"arms": {"1": {"metric": {}}}})
    with pytest.raises(ConfigError, match="not an arm"):
        ExperimentCounters.from_dict(spec, {"arms": {"7": ExperimentCounters(spec).arms["1"].to_dict()}})


@pytest.mark.parametrize("value", [1e200, -1e200, 1e16])
def test_an_absurd_outcome_is_refused_and_the_counters_stay_finite_and_saveable(value: float) -> None:
    counters = ExperimentCounters(_spec(metric={"name": "revenue", "kind": "continuous"}))
    counters.record_outcome("1", 3.0)
    with pytest.raises(RequestError, match="revenue"):
        counters.record_outcome("1", value)
    with pytest.raises(RequestError, match="latency_ms"):
        counters.record_outcome("1", 1.0, guardrails={"latency_ms": 1e300})
    arm = counters.arms["1"]
    assert (arm.metric.n, arm.metric.total_sq, arm.guardrails) == (1, 9.0, {})
    saved = json.loads(json.dumps(counters.to_dict(), allow_nan=False))  # no NaN/inf ever reaches a file
    assert ExperimentCounters.from_dict(counters.spec, saved).arms["1"].metric.n == 1


def test_a_metric_counter_refuses_a_value_whose_square_overflows_and_changes_nothing() -> None:
    from modelserve.experiments.experiment import MetricCounter

    counter = MetricCounter(n=1, total=2.0, total_sq=4.0)
    with pytest.raises(RequestError, match="overflow"):
        counter.add(1e200)
    assert (counter.n, counter.total, counter.total_sq) == (1, 2.0, 4.0)


@pytest.mark.parametrize("weight", [1e308, float("inf"), float("nan"), 1e7, True])
def test_arm_weights_that_are_absurd_are_refused(weight: Any) -> None:
    with pytest.raises(ConfigError, match="weight"):
        _spec(arms=[{"version": "1", "weight": weight}, {"version": "2", "weight": weight}])
