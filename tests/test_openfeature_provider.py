from __future__ import annotations

import sys
from pathlib import Path

from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason

from modelserve.routing.flagd import parse_flagset

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))
from openfeature_modelserve import ModelServeProvider

DOC = {
    "flags": {
        "color": {
            "state": "ENABLED",
            "variants": {"red": "red", "blue": "blue"},
            "defaultVariant": "red",
            "targeting": {"if": [{"==": [{"var": "targetingKey"}, "vip"]}, "blue"]},
            "metadata": {"owner": "ml"},
        },
        "limit": {"state": "ENABLED", "variants": {"low": 1}, "defaultVariant": "low"},
    }
}


def test_provider_resolves_with_targeting_key_and_attributes() -> None:
    provider = ModelServeProvider(parse_flagset(DOC))
    details = provider.resolve_string_details(
        flag_key="color", default_value="x", evaluation_context=EvaluationContext(targeting_key="vip")
    )
    assert (details.value, details.variant, details.reason) == ("blue", "blue", Reason.TARGETING_MATCH)
    assert details.flag_metadata == {"owner": "ml"}
    assert provider.resolve_float_details("limit", 0.0).value == 1.0
    assert provider.get_metadata().name == "modelserve"


def test_provider_maps_errors_to_openfeature_codes() -> None:
    provider = ModelServeProvider(parse_flagset(DOC))
    missing = provider.resolve_boolean_details("nope", False)
    assert (missing.value, missing.reason, missing.error_code) == (
        False,
        Reason.ERROR,
        ErrorCode.FLAG_NOT_FOUND,
    )
    mismatch = provider.resolve_integer_details("color", 3)
    assert mismatch.error_code == ErrorCode.TYPE_MISMATCH and mismatch.value == 3


class _Source:
    def __init__(self) -> None:
        self.flagset = parse_flagset(DOC)


def test_provider_follows_a_swapped_flagset() -> None:
    source = _Source()
    provider = ModelServeProvider(source)
    assert provider.resolve_string_details("color", "x").value == "red"
    source.flagset = parse_flagset({"flags": {"color": {"state": "DISABLED", "variants": {"r": "r"}}}})
    assert provider.resolve_string_details("color", "x").reason == Reason.DISABLED
