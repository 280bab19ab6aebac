"""Bandit policies: safeguards, Thompson regret below a uniform split, persistence."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import beta

from modelserve.errors import ConfigError, RequestError
from modelserve.experiments.bandits import (
    EpsilonGreedy,
    GaussianThompsonSampling,
    ThompsonSampling,
    bandit_from_dict,
)

RATES = {"1": 0.10, "2": 0.12, "3": 0.15}


def _run(policy: ThompsonSampling | EpsilonGreedy, steps: int, seed: int) -> float:
    """Serve `steps` requests, feeding back Bernoulli rewards; returns cumulative expected regret."""
    rng = np.random.default_rng(seed)
    best = max(RATES.values())
    regret = 0.0
    uniforms = rng.random(steps)
    for u in uniforms:
        arm = policy.choose()
        regret += best - RATES[arm]
        policy.update(arm, float(u < RATES[arm]))
    return regret


def test_thompson_regret_is_clearly_below_a_uniform_split() -> None:
    steps = 20_000
    policy = ThompsonSampling(list(RATES), rng=np.random.default_rng(1), draws=2_000)
    regret = _run(policy, steps, seed=2)
    uniform = steps * (max(RATES.values()) - np.mean(list(RATES.values())))
    assert regret < 0.5 * uniform
    assert max(policy.weights(), key=policy.weights().__getitem__) == "3"


def test_thompson_over_five_arms_keeps_its_regret_far_below_a_uniform_split() -> None:
    rates = {"1": 0.10, "2": 0.11, "3": 0.12, "4": 0.13, "5": 0.15}
    steps = 20_000
    policy = ThompsonSampling(list(rates), rng=np.random.default_rng(11), draws=2_000)
    rng = np.random.default_rng(12)
    regret = 0.0
    for u in rng.random(steps):
        arm = policy.choose()
        regret += 0.15 - rates[arm]
        policy.update(arm, float(u < rates[arm]))
    assert regret < 0.4 * steps * (0.15 - np.mean(list(rates.values())))
    assert max(policy.weights(), key=policy.weights().__getitem__) == "5"


def test_epsilon_greedy_also_beats_a_uniform_split() -> None:
    steps = 20_000
    policy = EpsilonGreedy(list(RATES), rng=np.random.default_rng(3), epsilon=0.1)
    uniform = steps * (max(RATES.values()) - np.mean(list(RATES.values())))
    assert _run(policy, steps, seed=4) < 0.7 * uniform


def test_weights_stay_initial_until_every_arm_has_min_outcomes() -> None:
    policy = ThompsonSampling(["a", "b"], rng=np.random.default_rng(0), min_outcomes=100, reweight_every=10)
    for _ in range(500):
        policy.update("a", 1.0)
    for _ in range(99):
        policy.update("b", 0.0)
    policy.reweight()
    assert policy.weights() == {"a": 0.5, "b": 0.5}
    policy.update("b", 0.0)
    policy.reweight()
    assert policy.weights()["a"] > 0.9


def test_floor_keeps_every_arm_in_play() -> None:
    policy = ThompsonSampling(["a", "b", "c"], rng=np.random.default_rng(0), floor=0.01, min_outcomes=10)
    for arm, reward in (("a", 1.0), ("b", 0.0), ("c", 0.0)):
        for _ in range(200):
            policy.update(arm, reward)
    policy.reweight()
    weights = policy.weights()
    assert weights["b"] == pytest.approx(0.01) and weights["c"] == pytest.approx(0.01)
    assert sum(weights.values()) == pytest.approx(1.0)


def test_choose_with_a_bucket_is_deterministic_and_follows_the_weights() -> None:
    policy = ThompsonSampling(["a", "b"], rng=np.random.default_rng(0), initial_weights=[0.25, 0.75])
    assert policy.choose(0.0) == "a" and policy.choose(0.2499) == "a"
    assert policy.choose(0.25) == "b" and policy.choose(0.99999) == "b"
    picks = [policy.choose() for _ in range(4_000)]
    assert picks.count("a") / 4_000 == pytest.approx(0.25, abs=0.03)


def test_same_seed_gives_the_same_weights() -> None:
    def weights(seed: int) -> dict[str, float]:
        policy = ThompsonSampling(list(RATES), rng=np.random.default_rng(seed), draws=500)
        _run(policy, 1_000, seed=9)
        return policy.weights()

    assert weights(5) == weights(5)


def test_thompson_posterior_is_the_beta_posterior() -> None:
    policy = ThompsonSampling(["a", "b"], rng=np.random.default_rng(0))
    for reward in [1.0] * 30 + [0.0] * 70:
        policy.update("a", reward)
    a = policy.posterior()[0]
    assert a.outcomes == 100 and a.mean == pytest.approx(31 / 102)
    assert (a.low, a.high) == pytest.approx(beta.interval(0.95, 31, 71), abs=1e-9)


def test_epsilon_greedy_accepts_continuous_rewards_and_reports_means() -> None:
    policy = EpsilonGreedy(["a", "b"], rng=np.random.default_rng(0), epsilon=0.2, min_outcomes=2)
    for value in (3.0, 5.0):
        policy.update("a", value)
    for value in (1.0, 2.0):
        policy.update("b", value)
    policy.reweight()
    assert policy.weights() == pytest.approx({"a": 0.01 + 0.98 * 0.9, "b": 0.01 + 0.98 * 0.1})
    a = policy.posterior()[0]
    assert a.mean == 4.0 and a.low < 4.0 < a.high


def test_invalid_rewards_and_arms_are_rejected_without_counting() -> None:
    policy = ThompsonSampling(["a", "b"], rng=np.random.default_rng(0))
    with pytest.raises(RequestError):
        policy.update("a", 2.0)
    with pytest.raises(RequestError):
        policy.update("zzz", 1.0)
    assert policy.n == [0, 0]


def test_bad_configuration_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        ThompsonSampling(["a"], rng=np.random.default_rng(0))
    with pytest.raises(ConfigError):
        ThompsonSampling(["a", "b"], rng=np.random.default_rng(0), floor=0.6)
    with pytest.raises(ConfigError):
        EpsilonGreedy(["a", "b"], rng=np.random.default_rng(0), epsilon=1.5)


@pytest.mark.parametrize("kind", [ThompsonSampling, EpsilonGreedy])
def test_state_round_trips_through_a_json_dict(kind: type[ThompsonSampling] | type[EpsilonGreedy]) -> None:
    import json

    policy = kind(list(RATES), rng=np.random.default_rng(0), min_outcomes=5, reweight_every=50)
    _run(policy, 600, seed=1)
    restored = bandit_from_dict(json.loads(json.dumps(policy.to_dict())), rng=np.random.default_rng(0))
    assert type(restored) is kind
    assert restored.to_dict() == policy.to_dict()
    assert restored.posterior() == policy.posterior()


def test_malformed_state_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        bandit_from_dict({"kind": "thompson", "arms": ["a", "b"]}, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError):
        bandit_from_dict({"kind": "ucb"}, rng=np.random.default_rng(0))


@pytest.mark.parametrize("reward", [1e200, float("nan"), float("inf")])
def test_an_absurd_epsilon_greedy_reward_is_refused_before_anything_counts(reward: float) -> None:
    policy = EpsilonGreedy(["a", "b"], rng=np.random.default_rng(0), epsilon=0.2)
    policy.update("a", 2.0)
    with pytest.raises(RequestError):
        policy.update("a", reward)
    assert (policy.n, policy.total, policy.total_sq) == ([1, 0], [2.0, 0.0], [4.0, 0.0])


MEANS = {"1": 10.0, "2": 10.5, "3": 12.0, "4": 9.0, "5": 11.0}


def _run_continuous(
    policy: GaussianThompsonSampling | EpsilonGreedy, steps: int, seed: int
) -> dict[str, int]:
    """Serve `steps` requests with N(mean, 3^2) rewards; returns how often each arm was chosen."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 3.0, size=steps)
    chosen = dict.fromkeys(policy.arms, 0)
    for e in noise:
        arm = policy.choose()
        chosen[arm] += 1
        policy.update(arm, MEANS[arm] + float(e))
    return chosen


def test_gaussian_thompson_steers_five_arms_to_the_best_continuous_one() -> None:
    policy = GaussianThompsonSampling(list(MEANS), rng=np.random.default_rng(3), draws=2_000)
    chosen = _run_continuous(policy, 20_000, seed=4)
    assert max(chosen, key=chosen.__getitem__) == "3"
    assert policy.weights()["3"] > 0.9 and min(policy.weights().values()) >= 0.01 - 1e-12


def test_lower_is_better_makes_a_bandit_prefer_the_lowest_mean() -> None:
    policy = GaussianThompsonSampling(
        list(MEANS), rng=np.random.default_rng(5), draws=2_000, higher_is_better=False
    )
    _run_continuous(policy, 10_000, seed=6)
    assert max(policy.weights(), key=policy.weights().__getitem__) == "4"


def test_epsilon_decays_with_the_rewards_seen_and_the_floor_holds() -> None:
    policy = EpsilonGreedy(
        list(MEANS), rng=np.random.default_rng(7), epsilon=0.5, epsilon_decay=0.001, floor=0.02
    )
    assert policy.current_epsilon() == 0.5
    _run_continuous(policy, 10_000, seed=8)
    assert policy.current_epsilon() == pytest.approx(0.5 / 11)
    weights = policy.weights()
    assert max(weights, key=weights.__getitem__) == "3"
    # Explored share: floor + (1 - 5 * floor) * epsilon / 5 for each arm that is not the best.
    expected = 0.02 + (1 - 5 * 0.02) * policy.current_epsilon() / 5
    assert weights["1"] == pytest.approx(expected)


def test_a_removed_arm_leaves_the_draw_and_the_floor_applies_among_the_rest() -> None:
    policy = ThompsonSampling(["1", "2", "3"], rng=np.random.default_rng(9), floor=0.05, min_outcomes=10)
    assert policy.remove("2", "p95 gate failed")
    assert policy.weights() == pytest.approx({"1": 0.5, "2": 0.0, "3": 0.5})
    assert {policy.choose(i / 1000) for i in range(1000)} == {"1", "3"}
    for _ in range(50):
        policy.update("1", 0.0)
        policy.update("3", 1.0)
    policy.reweight()
    assert policy.weights()["2"] == 0.0 and policy.weights()["1"] == pytest.approx(0.05)
    assert not policy.remove("2", "again")
    restored = bandit_from_dict(policy.to_dict(), rng=np.random.default_rng(0))
    assert restored.removed == {"2": "p95 gate failed"} and restored.weights() == policy.weights()
    assert policy.remove("3", "error rate gate failed") and not policy.remove("1", "the last arm stays")
    assert policy.weights() == {"1": 1.0, "2": 0.0, "3": 0.0}


def test_continuous_and_decaying_policies_survive_a_round_trip() -> None:
    for policy in (
        GaussianThompsonSampling(["a", "b"], rng=np.random.default_rng(1), min_outcomes=2, reweight_every=2),
        EpsilonGreedy(["a", "b"], rng=np.random.default_rng(1), epsilon_decay=0.5, higher_is_better=False),
    ):
        for value in (1.0, 2.0, 3.0, 5.0):
            policy.update("a", value)
            policy.update("b", value * 2)
        restored = bandit_from_dict(policy.to_dict(), rng=np.random.default_rng(2))
        assert type(restored) is type(policy) and restored.to_dict() == policy.to_dict()
