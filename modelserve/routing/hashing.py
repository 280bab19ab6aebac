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

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593
_MAX_NORMALISED = 2**64 - 1
_MIN_NORMALISED = -(2**63)

_unpackers: dict[int, Any] = {}


def _unpacker(nblocks: int) -> Any:
    unpack = _unpackers.get(nblocks)
    if unpack is None:
        unpack = _unpackers[nblocks] = struct.Struct(f"<{nblocks}I").unpack_from
    return unpack


# The body below is murmur3 inlined by hand: at ~0.3 us per 4-byte block it is the hot part of
# a `fractional` evaluation, so no helper calls and literal constants only.
def _murmur3(data: bytes, h: int, total_length: int) -> int:
    length = len(data)
    nblocks = length >> 2
    if nblocks:
        for k in (_unpackers.get(nblocks) or _unpacker(nblocks))(data):
            k = (k * 0xCC9E2D51) & 0xFFFFFFFF
            h ^= (((k << 15) | (k >> 17)) * 0x1B873593) & 0xFFFFFFFF
            h = (((h << 13) | (h >> 19)) * 5 + 0xE6546B64) & 0xFFFFFFFF  # low 32 bits suffice
    tail = length & 3
    if tail:
        k = int.from_bytes(data[length - tail :], "little")
        k = (k * 0xCC9E2D51) & 0xFFFFFFFF
        h ^= (((k << 15) | (k >> 17)) * 0x1B873593) & 0xFFFFFFFF
    h ^= total_length
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & 0xFFFFFFFF
    return h ^ (h >> 16)


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit of `data`, unsigned (equals ``mmh3.hash(data, seed, signed=False)``)."""
    return _murmur3(data, seed & _MASK, len(data))


class PrefixedMurmur3:
    """murmur3 of ``prefix + suffix`` with the prefix's full blocks hashed once, up front.

    The shorthand ``fractional`` hashes ``cbor([flagKey, targetingKey])``: the flag key part is the
    same for every request, so only the targeting key's bytes are hashed per evaluation.
    """

    __slots__ = ("_done", "_h", "_tail")

    def __init__(self, prefix: bytes) -> None:
        done = len(prefix) & ~3
        h = 0
        for k in struct.unpack_from(f"<{done >> 2}I", prefix):
            k = (k * _C1) & _MASK
            h ^= (((k << 15) | (k >> 17)) * _C2) & _MASK
            h = ((((h << 13) | (h >> 19)) & _MASK) * 5 + 0xE6546B64) & _MASK
        self._h = h
        self._done = done
        self._tail = prefix[done:]

    def hash(self, suffix: bytes) -> int:
        """The murmur3 of prefix + `suffix`."""
        data = self._tail + suffix
        return _murmur3(data, self._h, self._done + len(data))

    def hash_text(self, text: str) -> int:
        """The murmur3 of prefix + canonical CBOR of `text` (the per-request half of a pair hash)."""
        raw = text.encode("utf-8")
        size = len(raw)
        data = self._tail + (bytes((0x60 | size,)) if size < 24 else cbor_head(3, size)) + raw
        return _murmur3(data, self._h, self._done + len(data))


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
