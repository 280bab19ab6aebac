from __future__ import annotations

from typing import Any

import pytest

from modelserve.errors import ConfigError
from modelserve.routing.flag_cache import EvaluationCache
from modelserve.routing.flagd import load_flagset, parse_flagset

DOC: dict[str, Any] = {
    "$evaluators": {"is_staff": {"ends_with": [{"var": "email"}, "@corp.com"]}},
    "metadata": {"team": "ml", "version": 1},
    "flags": {
        "fraud-version": {
            "state": "ENABLED",
            "variants": {"v1": "1", "v2": "2"},
            "defaultVariant": "v1",
            "targeting": {"if": [{"$ref": "is_staff"}, "v2", {"fractional": [["v1", 90], ["v2", 10]]}]},
            "metadata": {"version": 2},
        },
        "split": {
            "state": "ENABLED",
            "variants": {"a": "1", "b": "2"},
            "defaultVariant": "a",
            "targeting": {"fractional": [["a", 50], ["b", 50]]},
        },
        "static": {"state": "ENABLED", "variants": {"on": True, "off": False}, "defaultVariant": "on"},
        "off": {"state": "DISABLED", "variants": {"on": True}, "defaultVariant": "on"},
        "nodefault": {
            "state": "ENABLED",
            "variants": {"x": 1},
            "targeting": {"if": [{"var": "go"}, "x", None]},
        },
        "bad-variant": {
            "state": "ENABLED",
            "variants": {"x": 1},
            "defaultVariant": "x",
            "targeting": {"if": [True, "y"]},
        },
        "broken": {
            "state": "ENABLED",
            "variants": {"x": 1},
            "defaultVariant": "x",
            "targeting": {"nope": [1]},
        },
        "clock": {
            "state": "ENABLED",
            "variants": {"old": 1, "new": 2},
            "defaultVariant": "old",
            "targeting": {"if": [{">": [{"var": "$flagd.timestamp"}, 0]}, "new", "old"]},
        },
    },
}


@pytest.fixture(scope="module")
def flags():  # type: ignore[no-untyped-def]
    return parse_flagset(DOC, source="test.json")


def test_targeting_match_through_shared_evaluator_ref(flags) -> None:  # type: ignore[no-untyped-def]
    evaluation = flags.evaluate("fraud-version", {"email": "ann@corp.com", "targetingKey": "ann"})
    assert (evaluation.variant, evaluation.value, evaluation.reason) == ("v2", "2", "TARGETING_MATCH")


def test_fractional_root_reports_split(flags) -> None:  # type: ignore[no-untyped-def]
    assert flags.evaluate("split", {"targetingKey": "u1"}).reason == "SPLIT"


def test_static_disabled_and_default_reasons(flags) -> None:  # type: ignore[no-untyped-def]
    assert flags.evaluate("static").reason == "STATIC"
    disabled = flags.evaluate("off", default=False)
    assert (disabled.reason, disabled.value, disabled.variant) == ("DISABLED", False, None)
    default = flags.evaluate("nodefault", {"go": False}, default=9)
    assert (default.reason, default.value, default.variant) == ("DEFAULT", 9, None)


def test_errors_are_results_not_exceptions(flags) -> None:  # type: ignore[no-untyped-def]
    assert flags.evaluate("missing", default=3).error_code == "FLAG_NOT_FOUND"
    bad = flags.evaluate("bad-variant", default=3)
    assert (bad.reason, bad.error_code, bad.value) == ("ERROR", "GENERAL", 3)
    assert "'y'" in (bad.error_message or "")
    assert flags.evaluate("broken").error_code == "PARSE_ERROR"
    assert flags.problems == ("flag 'broken': invalid targeting: unknown operator 'nope'",)


def test_typed_resolution_reports_type_mismatch(flags) -> None:  # type: ignore[no-untyped-def]
    assert flags.resolve_boolean("static", False).value is True
    mismatch = flags.resolve_integer("static", 5)
    assert (mismatch.error_code, mismatch.value) == ("TYPE_MISMATCH", 5)
    assert flags.resolve_float("nodefault", 0.0, {"go": True}).value == 1.0
    assert flags.resolve_string("fraud-version", "x", {"email": "a@corp.com"}).value == "2"


def test_flag_metadata_overrides_flag_set_metadata(flags) -> None:  # type: ignore[no-untyped-def]
    metadata = flags.evaluate("fraud-version", {}).flag_metadata
    assert dict(metadata) == {"team": "ml", "version": 2}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "must hold a JSON object"),
        ("{}", "missing a 'flags' object"),
        ('{"flags": {"f": {"state": "ON", "variants": {"a": 1}}}}', "'state' must be"),
        ('{"flags": {"f": {"state": "ENABLED", "variants": {}}}}', "'variants' must be a non-empty object"),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}}',
            "defaultVariant 'b'",
        ),
        (
            '{"flags": {"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": [1]}}}',
            "JsonLogic object",
        ),
        ('{"flags": {}, "metadata": {"k": [1]}}', "metadata 'k'"),
    ],
)
def test_malformed_files_raise_config_error_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        load_flagset(text, source="bad.json")
    assert "bad.json" in str(info.value)


def test_strict_mode_rejects_uncompilable_targeting() -> None:
    with pytest.raises(ConfigError, match="unknown operator"):
        parse_flagset(DOC, strict=True)


def test_evaluation_never_raises_on_hostile_context(flags) -> None:  # type: ignore[no-untyped-def]
    for context in ({"email": {"a": [1]}}, {"email": 5, "targetingKey": 12}, {"targetingKey": "\ud800"}):
        assert flags.evaluate("fraud-version", context).variant in ("v1", "v2")


def test_cache_returns_same_evaluation_and_clears_on_flagset_swap(flags) -> None:  # type: ignore[no-untyped-def]
    cache = EvaluationCache(maxsize=100)
    context = {"targetingKey": "u1"}
    first = cache.evaluate(flags, "split", context)
    assert cache.evaluate(flags, "split", context) is first
    assert (cache.hits, cache.misses, len(cache)) == (1, 1, 1)
    cache.evaluate(parse_flagset(DOC), "split", context)
    assert (cache.misses, len(cache)) == (2, 1)


def test_cache_skips_time_dependent_flags_and_unhashable_contexts(flags) -> None:  # type: ignore[no-untyped-def]
    cache = EvaluationCache()
    cache.evaluate(flags, "clock", {"targetingKey": "u"})
    cache.evaluate(flags, "split", {"targetingKey": "u", "nested": {"a": 1}})
    assert len(cache) == 0


def _deep_if(levels: int) -> dict[str, Any]:
    rule: Any = "a"
    for _ in range(levels):
        rule = {"if": [{"==": [{"var": "k"}, "x"]}, rule, "b"]}
    return rule


def _doc(targeting: Any, **extra: Any) -> dict[str, Any]:
    flag = {
        "state": "ENABLED",
        "variants": {"a": "1", "b": "2"},
        "defaultVariant": "a",
        "targeting": targeting,
    }
    return {"flags": {"deep": flag}, **extra}


def test_a_deeply_nested_rule_is_refused_at_load_naming_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"flag 'deep': targeting nests more than 64 levels"):
        parse_flagset(_doc(_deep_if(400)), source="flags.json")
    assert parse_flagset(_doc(_deep_if(20))).evaluate("deep", {"k": "x"}).variant == "a"


def test_json_nested_beyond_the_parser_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_flagset("[" * 200_000 + "]" * 200_000, source="flags.json")


def test_exponential_refs_are_refused_without_expanding_them() -> None:
    evaluators = {f"e{i}": {"or": [{"$ref": f"e{i + 1}"}] * 4} for i in range(25)}
    evaluators["e25"] = {"==": [{"var": "k"}, "x"]}  # fully expanded: 4^25 nodes, 52 levels deep
    with pytest.raises(ConfigError, match="more than 5000 values"):
        parse_flagset(_doc({"if": [{"$ref": "e0"}, "a", "b"]}, **{"$evaluators": evaluators}))


def test_a_fractional_with_a_million_buckets_is_refused() -> None:
    buckets = [["a", 1]] * 1_000_000
    with pytest.raises(ConfigError, match="more than 5000 values"):
        parse_flagset(_doc({"fractional": buckets}))


def test_contexts_too_large_to_cache_are_evaluated_but_never_kept(flags) -> None:  # type: ignore[no-untyped-def]
    cache = EvaluationCache(maxsize=100)
    for i in range(50):
        context = {"targetingKey": f"u{i}", "note": "x" * 100_000}  # from x-context-* headers
        assert cache.evaluate(flags, "split", context).variant in ("a", "b")
    assert len(cache) == 0 and cache.misses == 50
    small = {"targetingKey": "u1"}
    assert cache.evaluate(flags, "split", small) is cache.evaluate(flags, "split", small)
    assert len(cache) == 1
