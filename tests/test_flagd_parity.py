"""Assignments agree key by key with openfeature-flagd-core 2.x (the reference evaluator)."""

from __future__ import annotations

from typing import Any

import pytest
from openfeature.contrib.tools.flagd.core import FlagdCore
from openfeature.evaluation_context import EvaluationContext

from modelserve.routing.flagd import parse_flagset

VARIANTS = {"v1": "1", "v2": "2", "v3": "3"}
SPLITS: dict[str, Any] = {
    "two-way": {"fractional": [["v1", 83], ["v2", 17]]},
    "three-way": {"fractional": [["v1", 61], ["v2", 27], ["v3", 12]]},
    "three-way-custom-bucketing": {
        "fractional": [
            {"cat": [{"var": "$flagd.flagKey"}, {"var": "targetingKey"}]},
            ["v1", 5],
            ["v2", 3],
            ["v3", 2],
        ]
    },
}
DOC = {
    "flags": {
        key: {"state": "ENABLED", "variants": VARIANTS, "defaultVariant": "v1", "targeting": rule}
        for key, rule in SPLITS.items()
    }
}
KEYS_PER_SPLIT = {"two-way": 40_000, "three-way": 30_000, "three-way-custom-bucketing": 30_000}  # 100k in all


@pytest.mark.parametrize("flag_key", list(SPLITS))
def test_fractional_assignments_match_flagd_core_key_by_key(flag_key: str) -> None:
    ours = parse_flagset(DOC)
    reference = FlagdCore()
    reference.set_flags(DOC)
    mismatches = []
    counts: dict[str, int] = {}
    for i in range(KEYS_PER_SPLIT[flag_key]):
        key = f"user-{i}" if i % 3 else f"{i:x}@example.com"
        mine = ours.evaluate(flag_key, {"targetingKey": key}).variant
        theirs = reference.resolve_string_value(flag_key, "", EvaluationContext(targeting_key=key)).variant
        counts[mine or ""] = counts.get(mine or "", 0) + 1
        if mine != theirs:
            mismatches.append((key, mine, theirs))
    assert mismatches == []
    assert len(counts) == (2 if flag_key == "two-way" else 3)
