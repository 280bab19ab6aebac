from __future__ import annotations

import math
import time
from typing import Any

import pytest

from modelserve.routing.jsonlogic import JsonLogicError, compile_rule


def run(rule: Any, data: Any = None, flag_key: str | None = "my-flag") -> Any:
    return compile_rule(rule, flag_key=flag_key).fn({} if data is None else data)


@pytest.mark.parametrize(
    ("rule", "data", "expected"),
    [
        ({"==": [1, 1]}, None, True),
        ({"==": [1, "1"]}, None, True),
        ({"==": [0, ""]}, None, True),
        ({"==": [None, 0]}, None, False),
        ({"==": [None, None]}, None, True),
        ({"==": [True, 1]}, None, True),
        ({"==": ["a", "b"]}, None, False),
        ({"===": [1, "1"]}, None, False),
        ({"===": [1, 1.0]}, None, True),
        ({"===": [True, 1]}, None, False),
        ({"!=": [1, "2"]}, None, True),
        ({"!==": [1, "1"]}, None, True),
        ({"<": [1, 2]}, None, True),
        ({"<": ["10", "9"]}, None, True),
        ({"<": [10, "9"]}, None, False),
        ({"<": [1, 2, 3]}, None, True),
        ({"<": [1, 4, 3]}, None, False),
        ({"<=": [1, 1, 3]}, None, True),
        ({">": [3, 2]}, None, True),
        ({">=": [3, 3]}, None, True),
        ({"<": [None, 1]}, None, True),
        ({"<": ["abc", 1]}, None, False),
        ({"in": ["b", "abc"]}, None, True),
        ({"in": ["b", ["a", "b"]]}, None, True),
        ({"in": [1, ["1"]]}, None, False),
        ({"in": ["x", None]}, None, False),
        ({"!": [[]]}, None, True),
        ({"!": [{}]}, None, False),
        ({"!!": ["0"]}, None, True),
        ({"!!": [0]}, None, False),
        ({"!!": [[0]]}, None, True),
        ({"and": [1, "", 2]}, None, ""),
        ({"and": [1, 2]}, None, 2),
        ({"or": [0, "", "x"]}, None, "x"),
        ({"or": [0, ""]}, None, ""),
        ({"if": [True, "yes", "no"]}, None, "yes"),
        ({"if": [[], "yes", "no"]}, None, "no"),
        ({"if": [False, 1, False, 2, 3]}, None, 3),
        ({"if": [False, 1, True, 2, 3]}, None, 2),
        ({"if": [False, 1]}, None, None),
        ({"if": []}, None, None),
        ({"?:": [1, "a", "b"]}, None, "a"),
        ({"var": "a.b"}, {"a": {"b": 5}}, 5),
        ({"var": ["a.c", "dflt"]}, {"a": {"b": 5}}, "dflt"),
        ({"var": "list.1"}, {"list": [10, 20]}, 20),
        ({"var": ""}, {"x": 1}, {"x": 1}),
        ({"var": [{"cat": ["a", ".b"]}]}, {"a": {"b": 7}}, 7),
        ({"missing": ["a", "b", "c"]}, {"a": 1, "b": ""}, ["b", "c"]),
        ({"missing": {"merge": [["a"], ["z"]]}}, {"a": 1}, ["z"]),
        ({"missing_some": [1, ["a", "b"]]}, {"a": 1}, []),
        ({"missing_some": [2, ["a", "b"]]}, {"a": 1}, ["b"]),
        ({"cat": ["a", 1, 1.5, None, True]}, None, "a11.5nulltrue"),
        ({"cat": [2.0]}, None, "2"),
        ({"substr": ["jsonlogic", 4]}, None, "logic"),
        ({"substr": ["jsonlogic", -5]}, None, "logic"),
        ({"substr": ["jsonlogic", 1, 3]}, None, "son"),
        ({"substr": ["jsonlogic", 4, -2]}, None, "log"),
        ({"+": [1, "2", 3.5]}, None, 6.5),
        ({"+": ["3"]}, None, 3),
        ({"-": [5, 2]}, None, 3),
        ({"-": [2]}, None, -2),
        ({"*": [2, 3, "4"]}, None, 24),
        ({"/": [7, 2]}, None, 3.5),
        ({"/": [1, 0]}, None, math.inf),
        ({"%": [7, 3]}, None, 1),
        ({"%": [-7, 3]}, None, -1),
        ({"min": [3, 1, 2]}, None, 1),
        ({"max": [3, "7", 2]}, None, 7),
        ({"merge": [[1, 2], 3, [[4]]]}, None, [1, 2, 3, [4]]),
        ({"map": [{"var": "xs"}, {"*": [{"var": ""}, 2]}]}, {"xs": [1, 2]}, [2, 4]),
        ({"filter": [{"var": "xs"}, {">": [{"var": ""}, 1]}]}, {"xs": [1, 2, 3]}, [2, 3]),
        (
            {"reduce": [{"var": "xs"}, {"+": [{"var": "current"}, {"var": "accumulator"}]}, 0]},
            {"xs": [1, 2, 3]},
            6,
        ),
        ({"all": [[1, 2], {">": [{"var": ""}, 0]}]}, None, True),
        ({"all": [[], {">": [{"var": ""}, 0]}]}, None, False),
        ({"some": [[0, 2], {">": [{"var": ""}, 1]}]}, None, True),
        ({"none": [[0, 1], {">": [{"var": ""}, 1]}]}, None, True),
        ({"starts_with": [{"var": "id"}, "abc"]}, {"id": "abcdef"}, True),
        ({"ends_with": [{"var": "id"}, "xyz"]}, {"id": "abcdef"}, False),
        ({"starts_with": [{"var": "id"}, "abc"]}, {"id": 123}, None),
        ({"starts_with": ["abc"]}, None, None),
        ({"sem_ver": ["1.2.3", ">=", "1.2.0"]}, None, True),
        ({"sem_ver": ["2.0.0-alpha", "<", "2.0.0"]}, None, True),
        ({"sem_ver": ["1.0.0-alpha.1", "<", "1.0.0-alpha.beta"]}, None, True),
        ({"sem_ver": ["v1.4", "^", "1"]}, None, True),
        ({"sem_ver": ["1.0.0+build", "=", "1.0.0"]}, None, True),
        ({"sem_ver": ["not-a-version", "=", "1.0.0"]}, None, None),
        ({"sem_ver": ["1.0.0", "===", "1.0.0"]}, None, None),
        ({"sem_ver": ["1.0.0", "="]}, None, None),
        ({"var": "$flagd.flagKey"}, None, "my-flag"),
        ({"foo": 1, "bar": 2}, None, {"foo": 1, "bar": 2}),
    ],
)
def test_operator_follows_json_logic_js_semantics(rule: Any, data: Any, expected: Any) -> None:
    assert run(rule, data) == expected


def test_flagd_timestamp_is_unix_seconds_and_marks_the_rule_time_dependent() -> None:
    compiled = compile_rule({"var": "$flagd.timestamp"}, flag_key="f")
    assert compiled.time_dependent
    assert abs(compiled.fn({}) - int(time.time())) <= 1
    assert not compile_rule({"var": "user"}, flag_key="f").time_dependent


def test_unknown_operator_fails_at_compile_time() -> None:
    with pytest.raises(JsonLogicError, match="unknown operator 'nope'"):
        compile_rule({"if": [{"nope": [1]}, "a", "b"]})


def test_constant_subtrees_are_folded_at_compile_time() -> None:
    compiled = compile_rule({"if": [{"==": [1, 1]}, {"cat": ["a", "b"]}, "c"]})
    assert compiled.fn(None) == "ab"


def test_fractional_shorthand_uses_flag_key_and_targeting_key() -> None:
    rule = {"fractional": [["a", 50], ["b", 50]]}
    compiled = compile_rule(rule, flag_key="flag")
    results = {compiled.fn({"targetingKey": f"user-{i}"}) for i in range(200)}
    assert results == {"a", "b"}
    assert compiled.fn({}) is None
    assert compiled.fn({"targetingKey": ""}) is None
    assert compiled.fn({"targetingKey": 7}) is None


def test_fractional_invalid_weights_return_null() -> None:
    assert run({"fractional": [{"var": "k"}, ["a", 1.5], ["b", 1]]}, {"k": "x"}) is None
    assert run({"fractional": [{"var": "k"}, ["a", 0], ["b", 0]]}, {"k": "x"}) is None
    assert run({"fractional": [{"var": "k"}, ["a", True]]}, {"k": "x"}) is None
    assert run({"fractional": [{"var": "k"}, ["a", -5], ["b", 1]]}, {"k": "x"}) == "b"
    assert run({"fractional": []}) is None


def test_fractional_with_dynamic_weights_recomputes_the_table() -> None:
    rule = {"fractional": [{"var": "k"}, ["red", {"if": [{"var": "vip"}, 100, 0]}], ["blue", 10]]}
    assert run(rule, {"k": "x", "vip": False}) == "blue"
