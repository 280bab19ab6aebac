from __future__ import annotations

import dataclasses
import random

import pytest

from modelserve.errors import ConfigError
from modelserve.routing.flagd import Evaluation
from modelserve.routing.hashing import sticky_bucket
from modelserve.routing.policy import ModelPolicy, decide

READY = frozenset({"1", "2"})
BASE = ModelPolicy(model="fraud", live="1", candidate="2", canary_weight=25.0, allow_version_override=True)
KEYS = [f"user-{i}" for i in range(100_000)]


def flag(value: object, variant: str | None = "v", error: str | None = None) -> Evaluation:
    return Evaluation(
        flag_key="f",
        value=value,
        variant=variant,
        reason="ERROR" if error else "TARGETING_MATCH",
        error_code=error,
    )


def test_override_wins_when_allowed_and_ready() -> None:
    decision = decide(BASE, ready_versions=READY, targeting_key="u", override="2", flag_eval=None)
    assert (decision.version, decision.reason) == ("2", "override")


def test_override_is_ignored_when_not_allowed_or_not_ready() -> None:
    policy = dataclasses.replace(BASE, allow_version_override=False, canary_weight=0.0)
    decision = decide(policy, ready_versions=READY, targeting_key="u", override="2", flag_eval=None)
    assert (decision.version, decision.reason) == ("1", "stable")
    assert "not allowed" in decision.detail
    decision = decide(BASE, ready_versions=frozenset({"1"}), targeting_key="u", override="2", flag_eval=None)
    assert decision.version == "1" and "not ready" in decision.detail


def test_flag_variant_naming_a_ready_version_routes_there() -> None:
    policy = dataclasses.replace(BASE, flag="f")
    decision = decide(policy, ready_versions=READY, targeting_key="u", override=None, flag_eval=flag("2"))
    assert (decision.version, decision.reason) == ("2", "flag")


@pytest.mark.parametrize(
    ("evaluation", "why"),
    [(flag("9"), "not ready"), (flag(None, None, "FLAG_NOT_FOUND"), "FLAG_NOT_FOUND"), (flag("3"), "'3'")],
)
def test_unusable_flag_falls_back_to_live_and_says_why(evaluation: Evaluation, why: str) -> None:
    policy = dataclasses.replace(BASE, flag="f")
    decision = decide(policy, ready_versions=READY, targeting_key="u", override=None, flag_eval=evaluation)
    assert (decision.version, decision.reason) == ("1", "fallback")
    assert why in decision.detail


def test_canary_share_is_within_one_point_over_100k_keys() -> None:
    for weight in (5.0, 25.0, 50.0):
        policy = dataclasses.replace(BASE, canary_weight=weight)
        routed = sum(
            decide(policy, ready_versions=READY, targeting_key=k, override=None, flag_eval=None).version
            == "2"
            for k in KEYS
        )
        assert abs(routed / len(KEYS) * 100 - weight) <= 1.0


def test_canary_ramp_is_monotonic_and_sticky() -> None:
    low = dataclasses.replace(BASE, canary_weight=5.0)
    high = dataclasses.replace(BASE, canary_weight=25.0)
    keys = KEYS[:20_000]
    in_low = {
        k
        for k in keys
        if decide(low, ready_versions=READY, targeting_key=k, override=None, flag_eval=None).reason
        == "canary"
    }
    in_high = {
        k
        for k in keys
        if decide(high, ready_versions=READY, targeting_key=k, override=None, flag_eval=None).reason
        == "canary"
    }
    assert in_low and in_low <= in_high
    assert in_low == {k for k in keys if sticky_bucket("fraud", k) < 500}


def test_candidate_not_ready_means_stable() -> None:
    decision = decide(BASE, ready_versions=frozenset({"1"}), targeting_key="u", override=None, flag_eval=None)
    assert (decision.version, decision.reason) == ("1", "stable")
    assert "candidate '2' not ready" in decision.detail


def test_no_targeting_key_is_a_random_split_and_says_so() -> None:
    rng = random.Random(1).random
    decisions = [
        decide(BASE, ready_versions=READY, targeting_key=None, override=None, flag_eval=None, rng=rng)
        for _ in range(4000)
    ]
    assert all("no targeting key, random split" in d.detail for d in decisions)
    share = sum(d.version == "2" for d in decisions) / len(decisions)
    assert 0.2 < share < 0.3


def test_live_not_ready_is_a_fallback() -> None:
    decision = decide(BASE, ready_versions=frozenset(), targeting_key="u", override=None, flag_eval=None)
    assert (decision.version, decision.reason) == ("1", "fallback")


def test_shadows_are_ready_non_primary_versions_sampled_stickily() -> None:
    policy = ModelPolicy(model="fraud", live="1", shadow_versions=("2", "3", "1"), shadow_sample_rate=1.0)
    decision = decide(policy, ready_versions=READY, targeting_key="u", override=None, flag_eval=None)
    assert decision.shadows == ("2",)
    half = dataclasses.replace(policy, shadow_sample_rate=0.5)
    picks = [
        bool(decide(half, ready_versions=READY, targeting_key=k, override=None, flag_eval=None).shadows)
        for k in KEYS[:4000]
    ]
    again = [
        bool(decide(half, ready_versions=READY, targeting_key=k, override=None, flag_eval=None).shadows)
        for k in KEYS[:4000]
    ]
    assert picks == again and 0.45 < sum(picks) / len(picks) < 0.55


def test_policy_validates_its_numbers() -> None:
    with pytest.raises(ConfigError, match="canary_weight"):
        ModelPolicy(model="m", live="1", canary_weight=101)
    with pytest.raises(ConfigError, match="sample_rate"):
        ModelPolicy(model="m", live="1", shadow_sample_rate=2)
