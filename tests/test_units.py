"""One unit per quantity: weights are percent everywhere, and out-of-range values are refused clearly."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from modelserve.config import parse_model_config
from modelserve.errors import ConfigError, RequestError
from modelserve.state.policies import PolicyTable
from modelserve.state.store import MemoryStateStore

EXAMPLE_CONFIG = Path(__file__).parent.parent / "examples" / "models" / "credit" / "config.toml"


def uncommented(text: str) -> str:
    """The example config with every commented-out setting and table switched on."""
    return re.sub(r"^# (\[|[a-z_]+ = )", r"\1", text, flags=re.M)


def test_the_example_config_uncommented_sends_five_percent_not_five_hundredths() -> None:
    config = parse_model_config(tomllib.loads(uncommented(EXAMPLE_CONFIG.read_text())), where="example")
    assert config.routing.canary_weight == 5.0
    assert "PERCENT" in EXAMPLE_CONFIG.read_text()


def policies() -> PolicyTable:
    table = PolicyTable(MemoryStateStore())
    table.ensure("credit", parse_model_config({}, where="test"), "1")
    return table


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("canary_weight", 250, "canary_weight is a percent of targeting keys, 0 to 100"),
        ("canary_weight", -1, "canary_weight is a percent"),
        ("shadow_sample_rate", 5, "shadow_sample_rate is a fraction of requests, 0 to 1"),
        ("request_timeout_s", 0, "request_timeout_s must be a positive number at most 3600, got 0"),
        ("request_timeout_s", 3601, "request_timeout_s must be a positive number at most 3600, got 3601"),
        ("request_timeout_s", float("nan"), "request_timeout_s must be a finite number"),
    ],
)
def test_runtime_policy_changes_out_of_range_are_refused(field: str, value: float, message: str) -> None:
    table = policies()
    with pytest.raises(RequestError, match=message):
        table.update("credit", **{field: value})
    assert table.get("credit").canary_weight == 0.0  # type: ignore[union-attr]
    assert table.get("credit").request_timeout_s is None  # type: ignore[union-attr]


def test_a_policys_request_timeout_s_is_seconds_and_null_gives_the_config_deadline_back() -> None:
    table = policies()
    assert table.update("credit", request_timeout_s=0.25).request_timeout_s == 0.25
    assert table.update("credit", request_timeout_s=None).request_timeout_s is None


def test_config_out_of_range_weight_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"0\.\.100"):
        parse_model_config({"routing": {"canary_weight": 500}}, where="credit/config.toml")
