"""Rollout plans: the default plan, TOML parsing, validation errors, scaling and round trips."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelserve.errors import ConfigError
from modelserve.rollout.plan import RolloutPlan, default_plan, load_plan, plan_from_dict

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "plans" / "fast.toml"


def _minimal(**extra: Any) -> dict[str, Any]:
    return {"stages": [{"name": "canary", "weight": 10, "min_samples": 5}], **extra}


def test_default_plan_is_shadow_then_5_25_50_100() -> None:
    plan = default_plan()
    assert [(s.name, s.shadow, s.weight) for s in plan.stages] == [
        ("shadow", True, 0),
        ("canary-5", False, 5),
        ("canary-25", False, 25),
        ("canary-50", False, 50),
        ("full", False, 100),
    ]
    assert all(s.min_duration_s > 0 and s.min_samples > 0 for s in plan.stages)


def test_default_gates_have_the_seed_thresholds_and_agreement_only_in_shadow() -> None:
    shadow, canary = default_plan().stages[0], default_plan().stages[1]
    by_name = {g.name: g for g in shadow.gates}
    assert (by_name["error_rate_vs_baseline"].mode, by_name["error_rate_vs_baseline"].threshold) == (
        "relative",
        2.0,
    )
    assert (by_name["p95_vs_baseline"].threshold, by_name["p95_vs_baseline"].floor) == (1.5, 0.00025)
    assert (by_name["timeout_rate_vs_baseline"].threshold, by_name["timeout_rate_vs_baseline"].floor) == (
        2.0,
        0.005,
    )
    assert "p99_absolute" not in by_name  # a p99 needs 500 samples per stage to say anything
    assert by_name["error_rate_absolute"].threshold == 0.01
    assert {g.confidence for g in shadow.gates} == {0.95}
    assert by_name["shadow_agreement"].threshold == 0.85
    assert "shadow_agreement" not in {g.name for g in canary.gates}
    assert not any(g.metric == "experiment" or g.dry_run for g in shadow.gates)


def test_load_plan_default_by_name() -> None:
    assert load_plan("default") == default_plan()


def test_example_fast_plan_loads_with_the_default_gates() -> None:
    plan = load_plan(EXAMPLE)
    assert plan.name == "fast"
    assert [s.weight for s in plan.stages] == [0, 5, 25, 50, 100]
    assert [g.name for g in plan.stages[0].gates] == [g.name for g in default_plan().stages[0].gates]
    assert plan.interval_s < default_plan().interval_s


@pytest.mark.parametrize("plan", [default_plan(), load_plan(EXAMPLE), default_plan().scaled(0.1)])
def test_to_dict_reads_back_into_an_equal_plan(plan: RolloutPlan) -> None:
    assert plan_from_dict(plan.to_dict()) == plan


def test_scaled_multiplies_durations_but_not_samples() -> None:
    plan = default_plan().scaled(0.05)
    assert plan.interval_s == pytest.approx(0.25)
    assert plan.window_s == pytest.approx(30.0)
    assert plan.stages[1].min_duration_s == pytest.approx(3.0)
    assert plan.stages[1].min_samples == default_plan().stages[1].min_samples
    assert plan.time_scale == pytest.approx(0.05)


def test_time_scale_in_the_file_is_applied_once() -> None:
    plan = plan_from_dict(_minimal(time_scale=0.5, interval_s=2.0))
    assert plan.interval_s == 1.0
    assert plan_from_dict(plan.to_dict()).interval_s == 1.0


def test_missing_gates_mean_default_gates_and_an_empty_list_means_none() -> None:
    assert len(plan_from_dict(_minimal()).stages[0].gates) == 4  # the defaults bar agreement (no shadow)
    assert plan_from_dict(_minimal(gates=[])).stages[0].gates == ()


def test_stage_gate_replaces_a_common_gate_of_the_same_name() -> None:
    raw = _minimal()
    raw["stages"][0]["gates"] = [
        {"name": "p99_absolute", "metric": "p99", "threshold": 0.05, "dry_run": True, "failure_limit": 2}
    ]
    gates = {g.name: g for g in plan_from_dict(raw).stages[0].gates}
    assert (gates["p99_absolute"].threshold, gates["p99_absolute"].dry_run) == (0.05, True)
    assert gates["p99_absolute"].failure_limit == 2
    assert len(gates) == 5  # the four defaults of a canary stage and this one


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"stages": []}, "at least one"),
        (_minimal(treshold=1), "unknown key"),
        ({"stages": [{"name": "a", "weight": 150}]}, "weight"),
        ({"stages": [{"name": "a"}]}, "shadow = true or a weight"),
        ({"stages": [{"name": "a", "weight": 5}, {"name": "a", "weight": 10}]}, "unique"),
        ({"stages": [{"name": "a", "weight": 5, "min_samples": 0}]}, "min_samples"),
        (_minimal(gates=[{"name": "g", "metric": "recall", "threshold": 1}]), "metric must be"),
        (_minimal(gates=[{"name": "g", "metric": "accuracy", "threshold": 75}]), "fraction"),
        (_minimal(gates=[{"name": "g", "metric": "accuracy"}]), "threshold"),
        (_minimal(gates=[{"name": "g", "metric": "p95", "mode": "ratio", "threshold": 1}]), "mode"),
        (_minimal(gates=[{"name": "g", "metric": "p95", "threshold": -1}]), "threshold"),
        (_minimal(gates=[{"name": "g", "metric": "p95"}]), "threshold"),
        (
            _minimal(gates=[{"name": "g", "metric": "shadow_agreement", "mode": "relative", "threshold": 1}]),
            "baseline",
        ),
        (_minimal(gates=[{"name": "g", "metric": "shadow_agreement", "threshold": 85}]), "fraction"),
        (_minimal(gates=[{"name": "g", "metric": "p95", "threshold": 1, "dry_run": "yes"}]), "dry_run"),
        (
            _minimal(gates=[{"name": "g", "metric": "p95", "threshold": 1, "consecutive_successes": 0}]),
            ">= 1",
        ),
        (_minimal(gates=[{"name": "g", "metric": "p95", "threshold": 1}] * 2), "unique"),
        (_minimal(interval_s=0), "interval_s"),
    ],
)
def test_invalid_plans_raise_config_error_naming_the_field(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_from_dict(raw)


def test_bad_toml_and_missing_file_raise_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_plan(broken)
    with pytest.raises(ConfigError, match="cannot read"):
        load_plan(tmp_path / "absent.toml")


def test_plan_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "cautious.toml"
    path.write_text('[[stages]]\nname = "one"\nweight = 1\n')
    assert load_plan(path).name == "cautious"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"interval_s": 1e-9}, "busy-loops"),
        ({"interval_s": 1.0, "time_scale": 1e-9}, "busy-loops"),
        ({"time_scale": 1e308}, "time_scale"),
        ({"time_scale": float("nan")}, "time_scale"),
        ({"window_s": float("inf")}, "window_s"),
        ({"window_s": 1e12}, "at most"),
    ],
)
def test_absurd_plan_timing_is_refused_at_load(extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_from_dict(_minimal(**extra))


def test_request_timeout_s_is_read_kept_through_time_scale_and_round_trips() -> None:
    plan = plan_from_dict(_minimal(request_timeout_s=0.5, time_scale=0.1))
    assert plan.request_timeout_s == 0.5  # about requests, not the rollout's pace: never scaled
    assert plan_from_dict(plan.to_dict()) == plan
    assert plan_from_dict(_minimal()).request_timeout_s is None
    assert plan_from_dict(_minimal(request_timeout_s=3600)).request_timeout_s == 3600.0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "request_timeout_s must be a positive number at most 3600, got 0"),
        (-1.0, "positive number"),
        (3600.5, "at most 3600"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("30", "must be a number"),
        (True, "must be a number"),
    ],
)
def test_an_invalid_request_timeout_s_is_refused_at_load_naming_the_field(value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        plan_from_dict(_minimal(request_timeout_s=value), where="plan.toml")
    assert str(refused.value).startswith("plan.toml: request_timeout_s")
