"""JSON values with JavaScript's coercions, as json-logic-js applies them, and the pure operators.

Pure operators never raise on odd input: they return what JavaScript would (NaN, Infinity, false)
or null, so a rule with a bad comparison falls through to the flag's default instead of erroring.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

#: A compiled rule: a function of the data.
Rule = Callable[[Any], Any]

_NAN = math.nan
_NUMBER = re.compile(r"^[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?|Infinity)$")


class Const:
    """A compile-time constant (a folded sub-tree)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


Node = Rule | Const


def as_fn(node: Node) -> Rule:
    """A compiled node as a function of the data."""
    if isinstance(node, Const):
        value = node.value
        return lambda _d: value
    return node


def truthy(value: Any) -> bool:
    """JsonLogic truthiness: null, false, 0, NaN, "" and [] are false; everything else is true."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    kind = type(value)
    if kind is str or kind is list or kind is int:
        return bool(value)
    if kind is float:
        result: bool = value == value and value != 0.0
        return result
    return True  # objects


def to_number(value: Any) -> int | float:
    """JavaScript's `Number(value)`."""
    kind = type(value)
    if kind is int or kind is float:
        result: int | float = value
        return result
    if value is None or value is False:
        return 0
    if value is True:
        return 1
    if kind is str:
        text = value.strip()
        if not text:
            return 0
        if _NUMBER.match(text):
            return float(text.replace("Infinity", "inf"))
        lowered = text.lower()
        for prefix, base in (("0x", 16), ("0o", 8), ("0b", 2)):
            if lowered.startswith(prefix):
                try:
                    return int(text[2:], base)
                except ValueError:
                    return _NAN
        return _NAN
    if kind is list:
        return to_number(to_string(value))
    return _NAN


def _number_text(value: float) -> str:
    if value != value:
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    text = repr(value)
    if "e" in text:
        mantissa, exponent = text.split("e")
        sign = "-" if exponent[0] == "-" else "+"
        text = f"{mantissa}e{sign}{int(exponent.lstrip('+-'))}"
    return text


def to_string(value: Any) -> str:
    """JavaScript's `String(value)` (arrays join with commas, objects are "[object Object]")."""
    kind = type(value)
    if kind is str:
        result: str = value
        return result
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if kind is int:
        return str(value)
    if kind is float:
        return _number_text(value)
    if kind is list:
        return ",".join("" if item is None else to_string(item) for item in value)
    if isinstance(value, Mapping):
        return "[object Object]"
    return str(value)


def _primitive(value: Any) -> Any:
    kind = type(value)
    if kind is list or isinstance(value, Mapping):
        return to_string(value)
    return value


def loose_eq(a: Any, b: Any) -> bool:
    """JavaScript's `a == b` on JSON values."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list or ta is dict:
            return a is b
        result: bool = a == b
        return result
    if a is None or b is None:
        return False
    if ta is bool:
        return loose_eq(int(a), b)
    if tb is bool:
        return loose_eq(a, int(b))
    a_num = ta is int or ta is float
    b_num = tb is int or tb is float
    if a_num and b_num:
        result = a == b
        return result
    if a_num:
        result = a == to_number(_primitive(b))
        return result
    if b_num:
        result = to_number(_primitive(a)) == b
        return result
    if ta is str:
        return isinstance(b, (list, Mapping)) and a == to_string(b)
    if tb is str:
        return isinstance(a, (list, Mapping)) and to_string(a) == b
    return False


def strict_eq(a: Any, b: Any) -> bool:
    """JavaScript's `a === b` on JSON values (numbers by value, containers by identity)."""
    ta, tb = type(a), type(b)
    if ta is tb:
        if ta is list or ta is dict:
            return a is b
        result: bool = a == b
        return result
    return (ta is int or ta is float) and (tb is int or tb is float) and a == b


def _compare(a: Any, b: Any) -> tuple[Any, Any]:
    """Operands as JavaScript's relational operators compare them (strings or numbers)."""
    a, b = _primitive(a), _primitive(b)
    if type(a) is str and type(b) is str:
        return a, b
    return to_number(a), to_number(b)


def less(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if (ta is tb and ta in (str, int, float)) or (ta in (int, float) and tb in (int, float)):
        result: bool = a < b
        return result
    x, y = _compare(a, b)
    result = x < y
    return result


def less_equal(a: Any, b: Any) -> bool:
    ta, tb = type(a), type(b)
    if (ta is tb and ta in (str, int, float)) or (ta in (int, float) and tb in (int, float)):
        result: bool = a <= b
        return result
    x, y = _compare(a, b)
    result = x <= y
    return result


def op_lt(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    return less(a, b) and (c is None or less(b, c))


def op_le(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    return less_equal(a, b) and (c is None or less_equal(b, c))


def op_gt(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    return less(b, a) and (c is None or less(c, b))


def op_ge(a: Any = None, b: Any = None, c: Any = None, *_: Any) -> bool:
    return less_equal(b, a) and (c is None or less_equal(c, b))


def op_in(needle: Any = None, haystack: Any = None, *_: Any) -> bool:
    if type(haystack) is list:
        return any(strict_eq(needle, item) for item in haystack)
    if type(haystack) is str:
        return to_string(needle) in haystack
    return False


def _divide(a: Any = None, b: Any = None, *_: Any) -> float:
    x, y = to_number(a), to_number(b)
    if y == 0:
        if x == 0 or x != x:
            return _NAN
        return math.copysign(math.inf, x) * math.copysign(1.0, y)
    return x / y


def _modulo(a: Any = None, b: Any = None, *_: Any) -> int | float:
    x, y = to_number(a), to_number(b)
    if y == 0 or x != x or y != y or math.isinf(x):
        return _NAN
    if math.isinf(y):
        return x
    if type(x) is int and type(y) is int:
        remainder = abs(x) % abs(y)
        return -remainder if x < 0 else remainder
    return math.fmod(x, y)


def _minus(a: Any = None, b: Any = None, *_: Any) -> int | float:
    return -to_number(a) if b is None else to_number(a) - to_number(b)


def _plus(*args: Any) -> int | float:
    total: int | float = 0
    for arg in args:
        total += to_number(arg)
    return total


def _times(*args: Any) -> int | float:
    product: int | float = 1
    for arg in args:
        product *= to_number(arg)
    return product


def _extreme(pick: Callable[..., Any], empty: float) -> Callable[..., Any]:
    def extreme(*args: Any) -> int | float:
        numbers = [to_number(arg) for arg in args]
        if not numbers:
            return empty
        if any(n != n for n in numbers):
            return _NAN
        result: int | float = pick(numbers)
        return result

    return extreme


def substr(string: Any = None, start: Any = None, length: Any = None, *_: Any) -> str:
    """JavaScript's `String(string).substr(start, length)` (negative start/length count from the end)."""
    text = to_string(string)
    size = len(text)
    index = to_number(start)
    if index != index:
        index = 0
    index = int(index)
    index = max(size + index, 0) if index < 0 else min(index, size)
    if length is None:
        return text[index:]
    count = to_number(length)
    if count != count:
        return ""
    count = int(count)
    end = max(size + count, index) if count < 0 else index + count
    return text[index:end]


def merge(*args: Any) -> list[Any]:
    items: list[Any] = []
    for arg in args:
        if type(arg) is list:
            items.extend(arg)
        else:
            items.append(arg)
    return items


def lookup(data: Any, key: Any, default: Any = None) -> Any:
    """`var`: a dotted path (or array index) into `data`; `default` when absent or null."""
    if key is None or key == "" or (type(key) is list and not key):
        return data
    if type(key) in (int, float):
        key = to_string(key)
    for part in to_string(key).split("."):
        if isinstance(data, Mapping):
            data = data.get(part)
        elif type(data) is list or type(data) is str:
            if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
                return default
            index = int(part)
            if index >= len(data):
                return default
            data = data[index]
        else:
            return default
        if data is None:
            return default
    return data


def missing(data: Any, args: Any) -> list[Any]:
    keys = args[0] if args and type(args[0]) is list else args
    return [key for key in keys if (value := lookup(data, key)) is None or value == ""]


def missing_some(data: Any, args: Any) -> list[Any]:
    if len(args) < 2 or type(args[1]) is not list:
        return []
    need, keys = to_number(args[0]), args[1]
    absent = missing(data, [keys])
    return [] if len(keys) - len(absent) >= need else absent


PURE_OPERATORS: dict[str, Callable[..., Any]] = {
    "==": lambda a=None, b=None, *_: loose_eq(a, b),
    "!=": lambda a=None, b=None, *_: not loose_eq(a, b),
    "===": lambda a=None, b=None, *_: strict_eq(a, b),
    "!==": lambda a=None, b=None, *_: not strict_eq(a, b),
    "<": op_lt,
    "<=": op_le,
    ">": op_gt,
    ">=": op_ge,
    "!": lambda a=None, *_: not truthy(a),
    "!!": lambda a=None, *_: truthy(a),
    "in": op_in,
    "cat": lambda *args: "".join(to_string(arg) for arg in args),
    "substr": substr,
    "+": _plus,
    "-": _minus,
    "*": _times,
    "/": _divide,
    "%": _modulo,
    "min": _extreme(min, math.inf),
    "max": _extreme(max, -math.inf),
    "merge": merge,
}
