"""The `[monitoring]` table of a model's config.toml."""

from __future__ import annotations

import pytest

from modelserve.config import parse_model_config
from modelserve.errors import ConfigError
from modelserve.monitoring.service import monitor_config


def test_monitoring_options_are_parsed_into_the_monitor_config() -> None:
    config = parse_model_config(
        {
            "monitoring": {
                "reference": "ref.jsonl", "threshold": 0.25, "min_samples": 200, "sample_every": 4,
                "max_rate": 250,
            }
        },
        where="credit/config.toml",
    )  # fmt: skip
    assert config.monitoring.reference == "ref.jsonl"
    monitor = monitor_config(config.monitoring)
    assert monitor.drift.threshold == 0.25 and monitor.drift.min_samples == 200 and monitor.sample_every == 4
    assert monitor.max_rate == 250.0
    assert monitor_config(parse_model_config({}, where="m").monitoring).max_rate == 1000.0


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"threshold": 0}, "threshold must be positive"),
        ({"bins": 1}, "bins must be an integer >= 2"),
        ({"sample_every": 0}, "sample_every must be an integer >= 1"),
        ({"max_rate": -1}, "max_rate must be a number >= 0"),
        ({"max_rate": float("nan")}, "max_rate must be a number >= 0"),
        ({"max_rate": float("inf")}, "max_rate must be a number >= 0"),
        ({"thresold": 0.2}, "unknown key"),
        ({"min_samples": "many"}, "min_samples must be int"),
    ],
)
def test_bad_monitoring_options_name_the_file_and_key(table: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        parse_model_config({"monitoring": table}, where="credit/config.toml")
    assert "credit/config.toml [monitoring]" in str(raised.value)
