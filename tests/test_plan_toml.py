"""Plans as TOML: the default plan printed reads back equal; every example plan file loads."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from modelserve.rollout.plan import default_plan, load_plan, plan_from_dict
from modelserve.rollout.plan_toml import plan_to_toml

PLANS = Path(__file__).parent.parent / "examples" / "plans"


def test_the_default_plan_printed_as_toml_reads_back_equal() -> None:
    text = plan_to_toml(default_plan())
    assert plan_from_dict(tomllib.loads(text)) == default_plan()
    assert "weight = 5  # percent of traffic" in text and "floor = 0.00025" in text


def test_a_plan_whose_stages_differ_writes_gates_per_stage_and_reads_back_equal() -> None:
    raw = {
        "name": "mixed",
        "gates": [],
        "stages": [
            {"name": "a", "weight": 10, "gates": [{"name": "e", "metric": "error_rate", "threshold": 0.02}]},
            {"name": "b", "weight": 100, "gates": [{"name": "p", "metric": "p99", "threshold": 0.5}]},
        ],
    }
    plan = plan_from_dict(raw)
    assert plan_from_dict(tomllib.loads(plan_to_toml(plan))) == plan


def test_a_plans_request_deadline_is_written_and_reads_back_equal() -> None:
    stages = [{"name": "a", "weight": 10}]
    plan = plan_from_dict({"name": "strict", "request_timeout_s": 0.2, "stages": stages})
    text = plan_to_toml(plan)
    assert "request_timeout_s = 0.2" in text
    assert plan_from_dict(tomllib.loads(text)) == plan


def test_examples_hold_several_plans_and_default_toml_is_the_default_plan() -> None:
    files = sorted(PLANS.glob("*.toml"))
    assert len(files) >= 3
    assert load_plan(PLANS / "default.toml") == default_plan()


@pytest.mark.parametrize("path", sorted(PLANS.glob("*.toml")), ids=lambda p: p.name)
def test_every_example_plan_loads_with_weights_in_percent(path: Path) -> None:
    plan = load_plan(path)
    assert plan.stages[-1].weight == 100
    assert all(0 <= stage.weight <= 100 for stage in plan.stages)
    assert "fraud" not in path.read_text()
