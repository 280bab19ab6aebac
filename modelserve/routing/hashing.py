"""Sticky hashing: murmur3 (x86, 32-bit) over canonical CBOR, as flagd's `fractional` does it.

The pinned scheme (flagd "fractional v3", as in openfeature-flagd-core 2.x and the flagd testbed's
`@fractional-v3` scenarios):

* The **bucketing value** is either
  - the shorthand form (the first `fractional` argument is itself a bucket):
    the array ``[flagKey, targetingKey]`` (the targeting key must be a non-empty string), or
  - the value of the first argument (any JSON value: string, number, bool, null, array, object),
    hashed **on its own**: a custom expression such as ``{"cat": [{"var": "$flagd.flagKey"}, ...]}``
    only includes the flag key if it says so.
* The value is encoded as **canonical CBOR** (RFC 7049 §3.9): shortest integer and length heads,
  map keys sorted by (encoded length, encoded bytes), floats in the shortest of half/single/double
  that round-trips; floats with no fractional part inside [-2**63, 2**64 - 1] become integers first
  (so ``1.0`` hashes like ``1`` and ``-0.0`` like ``0``); integers past 64 bits are bignums (tags 2/3).
* ``h = murmur3_32(cbor, seed=0)`` (unsigned) and ``bucket = (h * total_weight) >> 32``; the variant
  is the first whose cumulative weight exceeds the bucket.

Older flagd ports hash the *string* ``flagKey + targetingKey`` (v2, same ``>> 32`` bucketing) or use
``abs(int32 hash) / MaxInt32 * 100`` (v1). Those give different assignments; modelserve implements
only v3 and a flag file relying on v1/v2 buckets will assign users differently.

`sticky_bucket` reuses the same scheme for canary and experiment assignment, so a canary on model
``m`` at weight ``w`` puts exactly the keys a flagd ``fractional`` shorthand on flag key ``m`` would.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import mmh3

_MAX_NORMALISED = 2**64 - 1
_MIN_NORMALISED = -(2**63)
_murmur3 = mmh3.hash  # (data, seed, signed): the C implementation, ~0.1 µs for a key


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of `data`, unsigned (``mmh3.hash(data, seed, signed=False)``)."""
    return _murmur3(data, seed, False)


class PrefixedMurmur3:
    """murmur3 of ``prefix + suffix`` for a fixed prefix.

    The shorthand ``fractional`` hashes ``cbor([flagKey, targetingKey])``: the flag key part is the
    same for every request, so it is encoded once and only the targeting key is encoded per request.
    """

    __slots__ = ("_prefix",)

    def __init__(self, prefix: bytes) -> None:
        self._prefix = prefix

    def hash(self, suffix: bytes) -> int:
        """The murmur3 of prefix + `suffix`."""
        return _murmur3(self._prefix + suffix, 0, False)

    def hash_text(self, text: str) -> int:
        """The murmur3 of prefix + canonical CBOR of `text` (the per-request half of a pair hash)."""
        raw = text.encode("utf-8")
        size = len(raw)
        head = bytes((0x60 | size,)) if size < 24 else cbor_head(3, size)
        return _murmur3(self._prefix + head + raw, 0, False)


# ---- canonical CBOR -------------------------------------------------------------------------


def cbor_head(major: int, value: int) -> bytes:
    """The shortest CBOR head for `major` type with argument `value` (0 <= value < 2**64)."""
    major <<= 5
    if value < 24:
        return bytes((major | value,))
    if value < 0x100:
        return bytes((major | 24, value))
    if value < 0x10000:
        return struct.pack(">BH", major | 25, value)
    if value < 0x100000000:
        return struct.pack(">BI", major | 26, value)
    return struct.pack(">BQ", major | 27, value)


def cbor_text(value: str) -> bytes:
    """Canonical CBOR of a text string (raises UnicodeEncodeError on lone surrogates)."""
    raw = value.encode("utf-8")
    return cbor_head(3, len(raw)) + raw


def _cbor_int(value: int) -> bytes:
    if value >= 0:
        if value <= _MAX_NORMALISED:
            return cbor_head(0, value)
        payload = value.to_bytes((value.bit_length() + 7) // 8, "big")
        return b"\xc2" + cbor_head(2, len(payload)) + payload
    magnitude = -1 - value
    if magnitude <= _MAX_NORMALISED:
        return cbor_head(1, magnitude)
    payload = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "big")
    return b"\xc3" + cbor_head(2, len(payload)) + payload


def _cbor_float(value: float) -> bytes:
    if value.is_integer() and _MIN_NORMALISED <= value <= _MAX_NORMALISED:
        return _cbor_int(int(value))
    if math.isnan(value):
        return b"\xf9\x7e\x00"
    if math.isinf(value):
        return b"\xf9\x7c\x00" if value > 0 else b"\xf9\xfc\x00"
    encoded = struct.pack(">Bd", 0xFB, value)
    for fmt, tag in ((">Bf", 0xFA), (">Be", 0xF9)):
        try:
            shorter = struct.pack(fmt, tag, value)
        except OverflowError:
            break
        if struct.unpack(fmt, shorter)[1] != value:
            break
        encoded = shorter
    return encoded


def canonical_cbor(value: Any) -> bytes:
    """Canonical CBOR of a JSON value, after flagd's integral-float normalisation.

    Raises `TypeError` for values JSON cannot hold and `UnicodeEncodeError` for lone surrogates.
    """
    kind = type(value)
    if kind is str:
        return cbor_text(value)
    if value is None:
        return b"\xf6"
    if kind is bool:
        return b"\xf5" if value else b"\xf4"
    if kind is int:
        return _cbor_int(value)
    if kind is float:
        return _cbor_float(value)
    if isinstance(value, (list, tuple)):
        return cbor_head(4, len(value)) + b"".join(canonical_cbor(item) for item in value)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"map key {key!r} is not a string")
            encoded_key = cbor_text(key)
            items.append((len(encoded_key), encoded_key, canonical_cbor(item)))
        items.sort(key=lambda entry: (entry[0], entry[1]))
        return cbor_head(5, len(items)) + b"".join(k + v for _, k, v in items)
    if isinstance(value, bool):
        return b"\xf5" if value else b"\xf4"
    if isinstance(value, int):
        return _cbor_int(int(value))
    if isinstance(value, float):
        return _cbor_float(float(value))
    if isinstance(value, str):
        return cbor_text(str(value))
    raise TypeError(f"cannot hash a {type(value).__name__} for fractional bucketing")


def fractional_hash(value: Any) -> int:
    """flagd v3 hash of a bucketing value: murmur3_32 of its canonical CBOR."""
    return murmur3_32(canonical_cbor(value))


@lru_cache(maxsize=4096)
def pair_hasher(first: str) -> PrefixedMurmur3:
    """A hasher for ``cbor([first, second])`` with `first` fixed (flag key or namespace)."""
    return PrefixedMurmur3(b"\x82" + cbor_text(first))


def pair_hash(first: str, second: str) -> int:
    """murmur3_32 of ``cbor([first, second])``: the flagd shorthand hash of (flagKey, targetingKey)."""
    return pair_hasher(first).hash_text(second)


def sticky_bucket(namespace: str, key: str, buckets: int = 10_000) -> int:
    """The bucket in ``range(buckets)`` of `key` within `namespace` (e.g. the model name).

    Same key, same bucket, on every replica and after restart. Assignment is monotonic: a key is in
    a canary of weight ``w`` percent iff ``bucket < w * buckets / 100``, so raising ``w`` only adds keys.
    """
    return (pair_hasher(namespace).hash_text(key) * buckets) >> 32
