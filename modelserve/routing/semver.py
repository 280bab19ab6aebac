"""Semantic versions for flagd's `sem_ver` operator (SemVer 2.0 precedence, build metadata ignored).

Inputs are normalised as flagd does: a leading ``v``/``V`` is dropped and partial versions are padded
(``"1"`` -> ``1.0.0``, ``"1.2"`` -> ``1.2.0``); numbers are formatted first (``1.2`` -> ``"1.2"``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)

#: A parsed version: (major, minor, patch, prerelease key). The prerelease key sorts a release after
#: its prereleases and compares identifiers as SemVer says (numbers < strings, numbers numerically).
Version = tuple[int, int, int, tuple[Any, ...]]

_RELEASE: tuple[Any, ...] = ((2,),)


def _version_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return f"{value:.1f}"
    return str(value)


@lru_cache(maxsize=1024)
def _parse_text(text: str) -> Version | None:
    if text[:1] in ("v", "V"):
        text = text[1:]
    numeric = text.split("-", 1)[0].split("+", 1)[0]
    dots = numeric.count(".")
    if dots < 2:
        text = numeric + ".0" * (2 - dots) + text[len(numeric) :]
    match = _SEMVER.match(text)
    if match is None:
        return None
    major, minor, patch, pre, _build = match.groups()
    if pre is None:
        key: tuple[Any, ...] = _RELEASE
    else:
        key = tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split("."))
        key = ((1,), *key)
    return int(major), int(minor), int(patch), key


def parse_version(value: Any) -> Version | None:
    """The version `value` denotes, or None when it is not a (partial) semantic version."""
    if value is None or isinstance(value, (list, dict)):
        return None
    return _parse_text(_version_text(value))


def compare(left: Version, right: Version, op: str) -> bool | None:
    """Apply a sem_ver operator (``= != < <= > >= ^ ~``); None for an unknown operator."""
    if op == "^":
        return left[0] == right[0]
    if op == "~":
        return left[0] == right[0] and left[1] == right[1]
    # A release ((2,),) sorts after its prereleases ((1,), ids...); ids compare element-wise,
    # numbers before strings, and a shorter list of equal prefix first, as tuples compare.
    a, b = left, right
    if op == "=":
        return a == b
    if op == "!=":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    if op == ">=":
        return a >= b
    return None
