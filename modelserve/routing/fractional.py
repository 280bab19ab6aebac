"""flagd's `fractional` operator, compiled: sticky weighted assignment by hash (scheme in `hashing`).

``{"fractional": [bucketBy?, [variant, weight?], ...]}``: without a bucketing expression the value
hashed is ``[flagKey, targetingKey]`` (the targeting key must be a non-empty string); with one, the
expression's value alone. Weights are integers (default 1, negatives count as 0); the total must be
in 1..2**31-1. Any invalid input makes the operator return null, so the flag's default applies.
When every bucket is a literal the table is built at compile time and only the hash runs per call.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from modelserve.routing.hashing import canonical_cbor, cbor_text, murmur3_32, pair_hasher
from modelserve.routing.jsvalues import Const, Node, as_fn

_MAX_TOTAL_WEIGHT = 2_147_483_647

#: (cumulative ends, variants, total weight)
Table = tuple[tuple[int, ...], tuple[Any, ...], int]


def build_table(buckets: list[Any]) -> Table | None:
    """The bucket table for evaluated bucket arguments, or None if any is malformed."""
    ends: list[int] = []
    variants: list[Any] = []
    total = 0
    for bucket in buckets:
        if not isinstance(bucket, list) or not 1 <= len(bucket) <= 2:
            return None
        weight = 1
        if len(bucket) == 2:
            weight = bucket[1]
            if type(weight) is not int:
                return None
            weight = max(weight, 0)
        total += weight
        ends.append(total)
        variants.append(bucket[0])
    if not 0 < total <= _MAX_TOTAL_WEIGHT:
        return None
    return tuple(ends), tuple(variants), total


def pick(table: Table, hash_value: int) -> Any:
    """The variant whose cumulative range holds ``(hash * total) >> 32``."""
    ends, variants, total = table
    bucket = (hash_value * total) >> 32
    for index, end in enumerate(ends):
        if bucket < end:
            return variants[index]
    return None


def hash_value(value: Any) -> int | None:
    """murmur3 of the canonical CBOR of a bucketing value; None if it cannot be encoded."""
    try:
        if type(value) is str:
            return murmur3_32(cbor_text(value))
        return murmur3_32(canonical_cbor(value))
    except (TypeError, ValueError, OverflowError, RecursionError):
        return None


def _shorthand_hash(data: Any, flag_key: str) -> int | None:
    key = data.get("targetingKey") if isinstance(data, Mapping) else None
    if type(key) is not str or not key:
        return None
    try:
        return pair_hasher(flag_key).hash_text(key)
    except UnicodeEncodeError:
        return None


def compile_fractional(compile: Callable[[Any], Node], args: list[Any], flag_key: str | None) -> Node:
    """Compile the arguments of a `fractional` operator."""
    if not args:
        return Const(None)
    key = flag_key or ""
    shorthand = isinstance(args[0], list)
    bucket_args = args if shorthand else args[1:]
    nodes = [compile(arg) for arg in bucket_args]
    static = all(isinstance(node, Const) for node in nodes)
    table = build_table([node.value for node in nodes]) if static else None  # type: ignore[union-attr]
    bucket_fns = [as_fn(node) for node in nodes]

    if shorthand and static:
        if table is None:
            return Const(None)
        hash_text = pair_hasher(key).hash_text
        ends, variants, total = table

        def fractional_shorthand(d: Any) -> Any:
            tk = d.get("targetingKey") if type(d) is dict else _mapping_get(d)
            if type(tk) is not str or not tk:
                return None
            try:
                bucket = (hash_text(tk) * total) >> 32
            except UnicodeEncodeError:
                return None
            for index, end in enumerate(ends):
                if bucket < end:
                    return variants[index]
            return None

        return fractional_shorthand

    by_fn = None if shorthand else as_fn(compile(args[0]))
    first_bucket = None if shorthand else compile(args[0])

    def fractional(d: Any) -> Any:
        if by_fn is None:
            hashed = _shorthand_hash(d, key)
            buckets = bucket_fns
        else:
            by = by_fn(d)
            if isinstance(by, list):  # the first argument evaluated to a bucket: shorthand form
                hashed = _shorthand_hash(d, key)
                buckets = [as_fn(first_bucket), *bucket_fns]  # type: ignore[arg-type]
            elif by is None:
                return None
            else:
                hashed = hash_value(by)
                buckets = bucket_fns
        if hashed is None:
            return None
        current = table if static and buckets is bucket_fns else build_table([f(d) for f in buckets])
        return None if current is None else pick(current, hashed)

    return fractional


def _mapping_get(data: Any) -> Any:
    return data.get("targetingKey") if isinstance(data, Mapping) else None
