"""One place that decides whether a number or a string from outside is acceptable.

Config files, saved state, plans, experiment specs and admin requests all pass their numbers through
`number` (finite, within explicit bounds; booleans are not numbers) and their free-form strings
through `text` (bounded length, no control characters), so a `nan`, an `inf`, a `1e308` or a CR/LF
is refused where it enters, with a message naming the field, instead of surfacing later as a hang,
an overflow, a `null` in saved state or a broken header.

The error type is the caller's: `ConfigError` for files an operator wrote, `RequestError` (HTTP 400)
for what a client sent.
"""

from __future__ import annotations

import math
import re
from typing import Any

from modelserve.errors import ModelServeError, RequestError

#: Larger magnitudes are refused by default: their squares and sums overflow float64 (1e154² > 1e308).
MAX_MAGNITUDE = 1e15
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: The longest request deadline anything may set (config.toml, a rollout plan, a policy): one hour.
MAX_REQUEST_TIMEOUT_S = 3600.0


def number(
    value: Any,
    name: str,
    *,
    low: float = -MAX_MAGNITUDE,
    high: float = MAX_MAGNITUDE,
    low_open: bool = False,
    integer: bool = False,
    error: type[ModelServeError] = RequestError,
) -> float:
    """`value` as a float when it is a finite number within [low, high] (or (low, high]); else `error`.

    `integer` also requires a whole number (an int, or a float such as 3.0). Booleans are refused.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise error(f"{name} must be a number, not {_shown(value)}")
    if isinstance(value, int) and abs(value) > 2**63:
        raise error(f"{name} must be within {low:g}..{high:g}, got {_shown(value)}")
    result = float(value)
    if not math.isfinite(result):
        raise error(f"{name} must be a finite number, got {_shown(value)}")
    if integer and not result.is_integer():
        raise error(f"{name} must be a whole number, got {_shown(value)}")
    if result < low or result > high or (low_open and result <= low):
        if low_open and low == 0:
            raise error(f"{name} must be a positive number at most {high:g}, got {_shown(value)}")
        bound = f"greater than {low:g}" if low_open else f"at least {low:g}"
        raise error(f"{name} must be {bound} and at most {high:g}, got {_shown(value)}")
    return result


def integer(
    value: Any, name: str, *, low: int = 0, high: int = 2**31, error: type[ModelServeError] = RequestError
) -> int:
    """`value` as an int within [low, high]; whole floats such as 4.0 are accepted."""
    return int(number(value, name, low=low, high=high, integer=True, error=error))


def request_timeout_s(value: Any, name: str, *, error: type[ModelServeError] = RequestError) -> float:
    """A request deadline in seconds (a rollout plan's, a policy's): finite, > 0, at most an hour."""
    return number(value, name, low=0.0, high=MAX_REQUEST_TIMEOUT_S, low_open=True, error=error)


def flag(value: Any, name: str, *, error: type[ModelServeError] = RequestError) -> bool:
    """A JSON/TOML boolean; the strings "false"/"true" and numbers are refused (they are not booleans)."""
    if not isinstance(value, bool):
        raise error(f"{name} must be true or false, not {_shown(value)}")
    return value


def text(value: Any, name: str, *, max_length: int = 256, error: type[ModelServeError] = RequestError) -> str:
    """A non-empty string of at most `max_length` characters without control characters (CR, LF, NUL)."""
    if not isinstance(value, str) or not value:
        raise error(f"{name} must be a non-empty string, not {_shown(value)}")
    if len(value) > max_length:
        raise error(f"{name} must be at most {max_length} characters, got {len(value)}")
    if _CONTROL.search(value):
        raise error(f"{name} must not contain control characters (CR, LF, NUL, ...)")
    return value


def all_finite(value: Any) -> bool:
    """Whether every float inside `value` (nested dicts, lists, tuples) is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    return True


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 40 else shown[:37] + "..."
