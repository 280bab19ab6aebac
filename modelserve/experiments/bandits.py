"""Bandit routing policies: Thompson sampling (Beta-Bernoulli) and epsilon-greedy.

A policy keeps per-arm reward counters and a table of routing weights. `choose()` runs per request
and only walks a cumulative-weight tuple (no numpy, no allocation); the weights are recomputed every
`reweight_every` rewards (or on `reweight()`), off the per-request path.

Safeguards (after GrowthBook's bandits): weights stay at their initial split until every arm has
`min_outcomes` rewards (default 100), and every arm keeps at least `floor` of the traffic (default 1%)
so a bad early streak cannot starve an arm for good. Thompson weights are each arm's posterior
probability of being best, estimated by Monte Carlo with an injected `numpy.random.Generator`, then
mixed with the floor: w = floor + (1 - k * floor) * P(best).

Objects here are not thread-safe; like the rest of the feedback path they live on the event loop.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy.stats import beta as beta_dist
from scipy.stats import norm

import modelserve.validation as validation
from modelserve.errors import ConfigError, RequestError


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmPosterior:
    """An arm's reward summary: outcomes, posterior mean, credible interval and current weight."""

    arm: str
    outcomes: int
    mean: float
    low: float
    high: float
    weight: float


class BanditPolicy(Protocol):
    """What routing and the feedback join need from a bandit."""

    arms: tuple[str, ...]

    def choose(self, bucket: float | None = None) -> str: ...

    def update(self, arm: str, reward: float) -> None: ...

    def weights(self) -> dict[str, float]: ...

    def posterior(self, *, level: float = 0.95) -> list[ArmPosterior]: ...

    def to_dict(self) -> dict[str, Any]: ...


class _BanditBase:
    kind = "base"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        rng: np.random.Generator,
        floor: float = 0.01,
        min_outcomes: int = 100,
        reweight_every: int = 100,
        initial_weights: Sequence[float] | None = None,
    ) -> None:
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise ConfigError("a bandit needs at least two distinct arms")
        if not 0 <= floor * len(arms) <= 1:
            raise ConfigError(f"floor {floor} is impossible with {len(arms)} arms")
        self.arms = tuple(arms)
        self.floor = floor
        self.min_outcomes = min_outcomes
        self.reweight_every = reweight_every
        self._rng = rng
        self._index = {arm: i for i, arm in enumerate(self.arms)}
        self.n = [0] * len(arms)
        self.total = [0.0] * len(arms)
        self._since_reweight = 0
        initial = list(initial_weights) if initial_weights is not None else [1.0] * len(arms)
        if len(initial) != len(arms) or min(initial) < 0 or sum(initial) <= 0:
            raise ConfigError("initial weights must be non-negative, one per arm, with a positive sum")
        self._set_weights([w / sum(initial) for w in initial])

    def _set_weights(self, weights: Sequence[float]) -> None:
        self._weights = tuple(float(w) for w in weights)
        self._cumulative = tuple(itertools.accumulate(self._weights))

    def choose(self, bucket: float | None = None) -> str:
        """The arm for one request; `bucket` in [0, 1) (e.g. from sticky hashing) or a fresh draw."""
        u = self._rng.random() if bucket is None else bucket
        i = bisect.bisect_right(self._cumulative, u * self._cumulative[-1])
        return self.arms[min(i, len(self.arms) - 1)]

    def weights(self) -> dict[str, float]:
        return dict(zip(self.arms, self._weights, strict=True))

    def _check_reward(self, reward: float) -> float:
        return validation.number(reward, "a bandit reward")

    def update(self, arm: str, reward: float) -> None:
        """Record one reward for `arm`; recomputes weights every `reweight_every` rewards."""
        try:
            i = self._index[arm]
        except KeyError:
            raise RequestError(f"unknown arm {arm!r}") from None
        value = self._check_reward(reward)
        self.n[i] += 1
        self.total[i] += value
        self._since_reweight += 1
        if self.reweight_every and self._since_reweight >= self.reweight_every:
            self.reweight()

    def ready(self) -> bool:
        """True once every arm has `min_outcomes` rewards, i.e. reweighting is allowed."""
        return min(self.n) >= self.min_outcomes

    def reweight(self) -> None:
        """Recompute routing weights from the rewards so far (no-op until `ready()`)."""
        self._since_reweight = 0
        if not self.ready():
            return
        share = self._preference()
        k = len(self.arms)
        self._set_weights([self.floor + (1 - k * self.floor) * float(p) for p in share])

    def _preference(self) -> np.ndarray:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state; restore with `bandit_from_dict`."""
        return {
            "kind": self.kind,
            "arms": list(self.arms),
            "floor": self.floor,
            "min_outcomes": self.min_outcomes,
            "reweight_every": self.reweight_every,
            "n": list(self.n),
            "total": list(self.total),
            "weights": list(self._weights),
            **self._extra_state(),
        }

    def _extra_state(self) -> dict[str, Any]:
        return {}


class ThompsonSampling(_BanditBase):
    """Beta-Bernoulli Thompson sampling with a Beta(1, 1) prior; rewards in [0, 1]."""

    kind = "thompson"

    def __init__(
        self, arms: Sequence[str], *, rng: np.random.Generator, draws: int = 10_000, **kwargs: Any
    ) -> None:
        super().__init__(arms, rng=rng, **kwargs)
        self.draws = draws

    def _check_reward(self, reward: float) -> float:
        value = float(reward)
        if not 0 <= value <= 1:
            raise RequestError(f"a Thompson sampling reward must lie in [0, 1], got {reward!r}")
        return value

    def _ab(self) -> tuple[np.ndarray, np.ndarray]:
        total = np.asarray(self.total)
        return 1 + total, 1 + np.asarray(self.n) - total

    def _preference(self) -> np.ndarray:
        a, b = self._ab()
        samples = self._rng.beta(a, b, size=(self.draws, len(self.arms)))
        return np.bincount(samples.argmax(axis=1), minlength=len(self.arms)) / self.draws

    def posterior(self, *, level: float = 0.95) -> list[ArmPosterior]:
        """Posterior mean and equal-tailed credible interval of each arm's success rate."""
        a, b = self._ab()
        tail = (1 - level) / 2
        low, high = beta_dist.ppf(tail, a, b), beta_dist.isf(tail, a, b)
        return [
            ArmPosterior(
                arm=arm,
                outcomes=self.n[i],
                mean=float(a[i] / (a[i] + b[i])),
                low=float(low[i]),
                high=float(high[i]),
                weight=self._weights[i],
            )
            for i, arm in enumerate(self.arms)
        ]

    def _extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws}


class EpsilonGreedy(_BanditBase):
    """Epsilon-greedy: 1 - epsilon to the best observed mean (ties split), epsilon spread evenly.

    Rewards may be any real number (higher is better); the floor still applies on top.
    """

    kind = "epsilon_greedy"

    def __init__(
        self, arms: Sequence[str], *, rng: np.random.Generator, epsilon: float = 0.1, **kwargs: Any
    ) -> None:
        super().__init__(arms, rng=rng, **kwargs)
        if not 0 <= epsilon <= 1:
            raise ConfigError("epsilon must lie in [0, 1]")
        self.epsilon = epsilon
        self.total_sq = [0.0] * len(self.arms)

    def update(self, arm: str, reward: float) -> None:
        value = self._check_reward(reward)  # before anything changes: a refused reward counts nowhere
        super().update(arm, value)
        self.total_sq[self._index[arm]] += value**2

    def _means(self) -> np.ndarray:
        n = np.maximum(np.asarray(self.n), 1)
        result: np.ndarray = np.asarray(self.total) / n
        return result

    def _preference(self) -> np.ndarray:
        means = self._means()
        best = means == means.max()
        k = len(self.arms)
        result: np.ndarray = self.epsilon / k + (1 - self.epsilon) * best / best.sum()
        return result

    def posterior(self, *, level: float = 0.95) -> list[ArmPosterior]:
        """Observed mean per arm with a normal-approximation interval (no prior)."""
        z = float(norm.isf((1 - level) / 2))
        out = []
        for i, arm in enumerate(self.arms):
            n = self.n[i]
            mean = self.total[i] / n if n else float("nan")
            var = (self.total_sq[i] - n * mean**2) / (n - 1) if n > 1 else float("nan")
            half = z * (max(var, 0.0) / n) ** 0.5 if n > 1 else float("nan")
            out.append(
                ArmPosterior(
                    arm=arm, outcomes=n, mean=mean, low=mean - half, high=mean + half, weight=self._weights[i]
                )
            )
        return out

    def _extra_state(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "total_sq": list(self.total_sq)}


def bandit_from_dict(
    data: Mapping[str, Any], *, rng: np.random.Generator
) -> ThompsonSampling | EpsilonGreedy:
    """Rebuild a policy saved by `to_dict()`; raises ConfigError on a malformed document."""
    try:
        common = {
            "floor": float(data["floor"]),
            "min_outcomes": int(data["min_outcomes"]),
            "reweight_every": int(data["reweight_every"]),
            "initial_weights": [float(w) for w in data["weights"]],
        }
        arms = [str(a) for a in data["arms"]]
        policy: ThompsonSampling | EpsilonGreedy
        if data["kind"] == "thompson":
            policy = ThompsonSampling(arms, rng=rng, draws=int(data["draws"]), **common)
        elif data["kind"] == "epsilon_greedy":
            policy = EpsilonGreedy(arms, rng=rng, epsilon=float(data["epsilon"]), **common)
            policy.total_sq = [float(v) for v in data["total_sq"]]
        else:
            raise ConfigError(f"unknown bandit kind {data['kind']!r}")
        if len(data["n"]) != len(arms) or len(data["total"]) != len(arms):
            raise ConfigError("bandit state has counters of the wrong length")
        policy.n = [int(v) for v in data["n"]]
        policy.total = [float(v) for v in data["total"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed bandit state: {exc!r}") from exc
    return policy
