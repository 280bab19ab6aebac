from __future__ import annotations

import random

import cbor2
import mmh3
import pytest
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import normalize_numbers

from modelserve.routing.hashing import (
    PrefixedMurmur3,
    canonical_cbor,
    fractional_hash,
    murmur3_32,
    pair_hash,
    sticky_bucket,
)


def test_murmur3_matches_mmh3_for_every_length_and_seed() -> None:
    rng = random.Random(7)
    for length in range(70):
        for _ in range(20):
            data = rng.randbytes(length)
            seed = rng.randrange(2**32)
            assert murmur3_32(data) == mmh3.hash(data, signed=False)
            assert murmur3_32(data, seed) == mmh3.hash(data, seed, signed=False)


def test_prefixed_murmur3_equals_hashing_the_concatenation() -> None:
    rng = random.Random(8)
    for prefix_length in range(9):
        prefix = rng.randbytes(prefix_length)
        hasher = PrefixedMurmur3(prefix)
        for suffix_length in range(13):
            suffix = rng.randbytes(suffix_length)
            assert hasher.hash(suffix) == mmh3.hash(prefix + suffix, signed=False)


@pytest.mark.parametrize(
    "value",
    [
        0,
        1,
        23,
        24,
        255,
        256,
        65535,
        65536,
        2**32 - 1,
        2**32,
        2**64 - 1,
        2**64,
        2**80,
        -1,
        -24,
        -25,
        -(2**64),
        -(2**64) - 1,
        -(2**80),
        0.5,
        0.1,
        -0.0,
        1.0,
        65504.0,
        65505.5,
        1e20,
        -1e20,
        3.4028234663852886e38,
        5e-324,
        2.0**63,
        2.0**64,
        -(2.0**63),
        float("inf"),
        float("-inf"),
        True,
        False,
        None,
        "",
        "a",
        "a" * 300,
        "ÿ",
        "あいう",
        [],
        [1, [], {}],
        {},
        {"b": 2, "a": 1},
        {"ÿ": 2, "aaa": 1},
        {"z": 1, "aa": {"x": [None, 2.5]}},
    ],
)
def test_canonical_cbor_matches_cbor2_canonical_after_flagd_normalisation(value: object) -> None:
    assert canonical_cbor(value) == cbor2.dumps(normalize_numbers(value), canonical=True)


def test_fractional_hash_is_murmur3_of_canonical_cbor() -> None:
    value = {"user": "u1", "n": 3}
    assert fractional_hash(value) == mmh3.hash(cbor2.dumps(value, canonical=True), signed=False)


def test_pair_hash_is_the_flagd_shorthand_hash() -> None:
    for flag_key in ("", "f", "fraud", "a-rather-long-flag-key-name"):
        for key in ("", "u", "user-1", "jon@company.com", "ünïcode"):
            expected = mmh3.hash(cbor2.dumps([flag_key, key], canonical=True), signed=False)
            assert pair_hash(flag_key, key) == expected


def test_sticky_bucket_is_deterministic_and_in_range() -> None:
    buckets = [sticky_bucket("fraud", f"user-{i}") for i in range(2000)]
    assert buckets == [sticky_bucket("fraud", f"user-{i}") for i in range(2000)]
    assert all(0 <= b < 10_000 for b in buckets)
    assert sticky_bucket("fraud", "user-1", 100) == (pair_hash("fraud", "user-1") * 100) >> 32


def test_sticky_bucket_depends_on_the_namespace() -> None:
    same = sum(sticky_bucket("a", f"k{i}") == sticky_bucket("b", f"k{i}") for i in range(1000))
    assert same < 20
