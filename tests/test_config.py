"""config.toml parsing: every number finite and sane, unreadable files a clear ConfigError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelserve.config import load_model_config, parse_model_config
from modelserve.errors import ConfigError


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("serving", "max_queue_delay_ms", float("nan")),
        ("serving", "max_queue_delay_ms", float("inf")),
        ("serving", "max_queue_delay_ms", 1e12),
        ("serving", "inline_threshold_us", float("nan")),
        ("serving", "max_batch_size", 10**12),
        ("serving", "max_concurrency", 0),
        ("routing", "canary_weight", float("nan")),
        ("shadow", "timeout_ms", float("inf")),
        ("shadow", "timeout_ms", 0.0),
        ("shadow", "sample_rate", float("nan")),
        ("shadow", "max_in_flight", 0),
        ("routing", "targeting_header", "x-user\nid"),
    ],
)
def test_non_finite_or_absurd_values_are_refused_naming_the_key(section: str, key: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=rf"\[{section}\] {key}"):
        parse_model_config({section: {key: value}}, where="models/fraud/config.toml")


def test_sane_values_still_parse() -> None:
    config = parse_model_config(
        {"serving": {"max_queue_delay_ms": 2, "max_batch_size": 64}, "shadow": {"timeout_ms": 50}},
        where="config.toml",
    )
    assert (config.serving.max_queue_delay_ms, config.shadow.timeout_ms) == (2.0, 50.0)


def test_an_unreadable_config_toml_is_a_config_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.mkdir()
    with pytest.raises(ConfigError, match=r"config\.toml cannot be read"):
        load_model_config(path)
