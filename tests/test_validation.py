"""The one validation helper: finite, bounded numbers; real booleans; short strings without CR/LF."""

from __future__ import annotations

from typing import Any

import pytest

import modelserve.validation as validation
from modelserve.errors import ConfigError, RequestError


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), -float("inf"), 1e308, 10**400, True, "1", None, [1]]
)
def test_number_refuses_what_is_not_a_finite_sane_number(value: Any) -> None:
    with pytest.raises(RequestError, match="rate"):
        validation.number(value, "rate")


def test_number_bounds_integers_and_the_callers_error_type() -> None:
    assert validation.number(3, "n", low=0, high=10) == 3.0
    assert validation.integer(4.0, "n", low=1, high=8) == 4
    with pytest.raises(ConfigError, match="whole number"):
        validation.integer(1.5, "n", error=ConfigError)
    with pytest.raises(RequestError, match="positive"):
        validation.number(0, "weight", low=0, high=1, low_open=True)
    with pytest.raises(RequestError, match="at most 1"):
        validation.number(2, "share", low=0, high=1)


@pytest.mark.parametrize("value", ["false", "true", 0, 1, None])
def test_flag_accepts_only_real_booleans(value: Any) -> None:
    with pytest.raises(RequestError, match="true or false"):
        validation.flag(value, "all")


@pytest.mark.parametrize("value", ["a\r\nb", "nul\x00", "", "x" * 257, 5])
def test_text_refuses_control_characters_empty_long_and_non_strings(value: Any) -> None:
    with pytest.raises(RequestError):
        validation.text(value, "name")


def test_all_finite_looks_inside_containers() -> None:
    assert validation.all_finite({"a": [1.0, {"b": (2.0, "x")}]})
    assert not validation.all_finite({"a": [1.0, {"b": (float("nan"),)}]})
