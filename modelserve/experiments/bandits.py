"""Bandit routing policies over any number of arms: Thompson sampling (Beta-Bernoulli for binary
rewards, Gaussian for continuous ones) and epsilon-greedy (epsilon optionally decaying).

A policy keeps per-arm reward counters and a table of routing weights. `choose()` runs per request
and only walks a cumulative-weight tuple (no numpy, no allocation); the weights are recomputed every
`reweight_every` rewards (or on `reweight()`), off the per-request path.

Safeguards (after GrowthBook's bandits): weights stay at their initial split until every arm has
`min_outcomes` rewards (default 100), and every arm keeps at least `floor` of the traffic (default 1%)
so a bad early streak cannot starve an arm for good. Thompson weights are each arm's posterior
probability of being best, estimated by Monte Carlo with an injected `numpy.random.Generator`, then
mixed with the floor: w = floor + (1 - k * floor) * P(best). Gaussian Thompson sampling draws each
arm's mean from N(observed mean, s^2 / n). Epsilon-greedy's epsilon may decay with the rewards seen,
epsilon_t = epsilon / (1 + decay * t), which explores less as evidence grows (the floor still holds).

`higher_is_better=False` makes a policy prefer the lowest mean (latency, cost). An arm can be taken
out of the draw (`remove`, e.g. when it fails the health gates): its weight drops to 0 at once, the
floor then applies among the remaining arms, and its counters stay for the report. `readmit` puts
it back **on probation**: exactly the floor weight, whatever its rewards say, until `end_probation`
(the supervisor ends it once the arm passes the health gates again, or removes it again).

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
    removed: dict[str, str]

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
        higher_is_better: bool = True,
    ) -> None:
        if len(arms) < 2 or len(set(arms)) != len(arms):
            raise ConfigError("a bandit needs at least two distinct arms")
        if not 0 <= floor * len(arms) <= 1:
            raise ConfigError(f"floor {floor} is impossible with {len(arms)} arms")
        self.arms = tuple(arms)
        self.floor = floor
        self.min_outcomes = min_outcomes
        self.reweight_every = reweight_every
        self.higher_is_better = higher_is_better
        self.removed: dict[str, str] = {}  # arm -> why it left the draw
        self.removed_at: dict[str, float] = {}  # arm -> when it left the draw (wall clock)
        self.removals: dict[str, int] = {}  # arm -> how often it left the draw
        self.probation: dict[str, float] = {}  # arm -> when it came back at the floor weight
        self._rng = rng
        self._index = {arm: i for i, arm in enumerate(self.arms)}
        self.n = [0] * len(arms)
        self.total = [0.0] * len(arms)
        self._since_reweight = 0
        initial = list(initial_weights) if initial_weights is not None else [1.0] * len(arms)
        if len(initial) != len(arms) or min(initial) < 0 or sum(initial) <= 0:
            raise ConfigError("initial weights must be non-negative, one per arm, with a positive sum")
        self._initial = [w / sum(initial) for w in initial]
        self._set_weights(self._initial)

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

    def set_rewards(self, rewards: Mapping[str, tuple[int, float, float]]) -> None:
        """Take reward sums counted elsewhere (a fleet's merged counters): arm -> (n, sum, sum of squares)."""
        for arm, (n, total, total_sq) in rewards.items():
            i = self._index[arm]
            self.n[i], self.total[i] = int(n), float(total)
            if isinstance(self, _MeanBandit):
                self.total_sq[i] = float(total_sq)

    def adopt_weights(self, weights: Mapping[str, float], removed: Mapping[str, str]) -> None:
        """Route by weights computed elsewhere (a fleet's leader); unknown arms are ignored."""
        self.removed = {arm: str(why) for arm, why in removed.items() if arm in self._index}
        self._set_weights([float(weights.get(arm, 0.0)) for arm in self.arms])

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
        """True once every arm still drawn has `min_outcomes` rewards, i.e. reweighting is allowed."""
        return min(n for arm, n in zip(self.arms, self.n, strict=True) if arm not in self.removed) >= (
            self.min_outcomes
        )

    @property
    def active(self) -> np.ndarray:
        """A boolean mask of the arms still in the draw."""
        return np.array([arm not in self.removed for arm in self.arms])

    def remove(self, arm: str, reason: str, *, at: float = 0.0) -> bool:
        """Take `arm` out of the draw (weight 0 from now on); False if it was out already or is the last."""
        if arm not in self._index:
            raise RequestError(f"unknown arm {arm!r}")
        if arm in self.removed or len(self.removed) >= len(self.arms) - 1:
            return False
        self.removed[arm] = reason
        self.removed_at[arm] = at
        self.removals[arm] = self.removals.get(arm, 0) + 1
        self.probation.pop(arm, None)
        self.reweight(force_initial=not self.ready())
        return True

    def readmit(self, arm: str, *, at: float = 0.0) -> bool:
        """Put a removed arm back in the draw on probation (the floor weight); False if it was not out."""
        if arm not in self.removed:
            return False
        del self.removed[arm]
        self.removed_at.pop(arm, None)
        self.probation[arm] = at
        self.reweight(force_initial=not self.ready())
        return True

    def end_probation(self, arm: str) -> bool:
        """Let an arm on probation be weighted by its rewards again; False if it was not on probation."""
        if self.probation.pop(arm, None) is None:
            return False
        self.reweight(force_initial=not self.ready())
        return True

    def reweight(self, *, force_initial: bool = False) -> None:
        """Recompute routing weights from the rewards so far (initial weights until `ready()`)."""
        self._since_reweight = 0
        active = self.active
        if force_initial or not self.ready():
            if not self.removed and not self.probation:
                return
            share = np.where(active, self._initial, 0.0)
        else:
            share = np.where(active, self._preference(), 0.0)
        # An arm on probation gets the floor and nothing more: its share of the rest is 0.
        trusted = active & np.array([arm not in self.probation for arm in self.arms])
        share = np.where(trusted, share, 0.0)
        if share.sum() <= 0:  # nothing to go by: an even split of the trusted arms (else of all active)
            share = trusted / trusted.sum() if trusted.any() else active / active.sum()
        share = share / share.sum()
        k = int(active.sum())
        floor = self.floor if self.floor * k <= 1 else 1 / k
        self._set_weights(
            [floor + (1 - k * floor) * float(p) if on else 0.0 for p, on in zip(share, active, strict=True)]
        )

    def _best(self, values: np.ndarray, axis: int | None = None) -> np.ndarray:
        """Index of the best value (highest, or lowest when lower is better) among the active arms."""
        masked = np.where(self.active, values, -np.inf if self.higher_is_better else np.inf)
        return np.asarray(masked.argmax(axis=axis) if self.higher_is_better else masked.argmin(axis=axis))

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
            "initial_weights": list(self._initial),
            "higher_is_better": self.higher_is_better,
            "removed": dict(self.removed),
            "removed_at": dict(self.removed_at),
            "removals": dict(self.removals),
            "probation": dict(self.probation),
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
        result: np.ndarray = np.bincount(self._best(samples, axis=1), minlength=len(self.arms)) / self.draws
        return result

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


class _MeanBandit(_BanditBase):
    """A policy over real-valued rewards: keeps sums of squares for variances and intervals."""

    def __init__(self, arms: Sequence[str], *, rng: np.random.Generator, **kwargs: Any) -> None:
        super().__init__(arms, rng=rng, **kwargs)
        self.total_sq = [0.0] * len(self.arms)

    def update(self, arm: str, reward: float) -> None:
        value = self._check_reward(reward)  # before anything changes: a refused reward counts nowhere
        super().update(arm, value)
        self.total_sq[self._index[arm]] += value**2

    def _means(self) -> np.ndarray:
        n = np.maximum(np.asarray(self.n), 1)
        result: np.ndarray = np.asarray(self.total) / n
        return result

    def _variances(self) -> np.ndarray:
        """Per-arm sample variances; an arm with fewer than 2 rewards borrows the pooled one (or 1)."""
        n = np.asarray(self.n, dtype=float)
        means = self._means()
        with np.errstate(divide="ignore", invalid="ignore"):
            var = (np.asarray(self.total_sq) - n * means**2) / (n - 1)
        total_n = n.sum()
        pooled = (sum(self.total_sq) - sum(self.total) ** 2 / total_n) / (total_n - 1) if total_n > 1 else 1.0
        fallback = pooled if pooled > 0 else 1.0
        result: np.ndarray = np.where((n > 1) & np.isfinite(var), np.maximum(var, 0.0), fallback)
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
        return {"total_sq": list(self.total_sq)}


class GaussianThompsonSampling(_MeanBandit):
    """Thompson sampling for continuous rewards: each arm's mean drawn from N(mean, s^2 / n)."""

    kind = "thompson_gaussian"

    def __init__(
        self, arms: Sequence[str], *, rng: np.random.Generator, draws: int = 10_000, **kwargs: Any
    ) -> None:
        super().__init__(arms, rng=rng, **kwargs)
        self.draws = draws

    def _preference(self) -> np.ndarray:
        n = np.maximum(np.asarray(self.n, dtype=float), 1.0)
        scale = np.sqrt(self._variances() / n)
        samples = self._rng.normal(self._means(), scale, size=(self.draws, len(self.arms)))
        result: np.ndarray = np.bincount(self._best(samples, axis=1), minlength=len(self.arms)) / self.draws
        return result

    def _extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws, "total_sq": list(self.total_sq)}


class EpsilonGreedy(_MeanBandit):
    """Epsilon-greedy: 1 - epsilon to the best observed mean (ties split), epsilon spread evenly.

    Rewards may be any real number; the floor still applies on top. With `epsilon_decay` > 0 the
    exploration share after t rewards is epsilon / (1 + epsilon_decay * t).
    """

    kind = "epsilon_greedy"

    def __init__(
        self,
        arms: Sequence[str],
        *,
        rng: np.random.Generator,
        epsilon: float = 0.1,
        epsilon_decay: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(arms, rng=rng, **kwargs)
        if not 0 <= epsilon <= 1:
            raise ConfigError("epsilon must lie in [0, 1]")
        if not epsilon_decay >= 0:
            raise ConfigError("epsilon_decay must be >= 0")
        self.epsilon = epsilon
        self.epsilon_decay = epsilon_decay

    def current_epsilon(self) -> float:
        """The exploration share now (after the decay of the rewards seen so far)."""
        return self.epsilon / (1 + self.epsilon_decay * sum(self.n))

    def _preference(self) -> np.ndarray:
        active = self.active
        best = np.zeros(len(self.arms), dtype=bool)
        means = np.where(active, self._means(), -np.inf if self.higher_is_better else np.inf)
        best[:] = means == (means.max() if self.higher_is_better else means.min())
        epsilon = self.current_epsilon()
        result: np.ndarray = epsilon * active / active.sum() + (1 - epsilon) * best / best.sum()
        return result

    def _extra_state(self) -> dict[str, Any]:
        return {"epsilon": self.epsilon, "epsilon_decay": self.epsilon_decay, "total_sq": list(self.total_sq)}


Bandit = ThompsonSampling | GaussianThompsonSampling | EpsilonGreedy


def bandit_from_dict(data: Mapping[str, Any], *, rng: np.random.Generator) -> Bandit:
    """Rebuild a policy saved by `to_dict()`; raises ConfigError on a malformed document."""
    try:
        common: dict[str, Any] = {
            "floor": float(data["floor"]),
            "min_outcomes": int(data["min_outcomes"]),
            "reweight_every": int(data["reweight_every"]),
            "initial_weights": [float(w) for w in data.get("initial_weights", data["weights"])],
            "higher_is_better": bool(data.get("higher_is_better", True)),
        }
        arms = [str(a) for a in data["arms"]]
        policy: Bandit
        if data["kind"] == "thompson":
            policy = ThompsonSampling(arms, rng=rng, draws=int(data["draws"]), **common)
        elif data["kind"] == "thompson_gaussian":
            policy = GaussianThompsonSampling(arms, rng=rng, draws=int(data["draws"]), **common)
        elif data["kind"] == "epsilon_greedy":
            policy = EpsilonGreedy(
                arms,
                rng=rng,
                epsilon=float(data["epsilon"]),
                epsilon_decay=float(data.get("epsilon_decay", 0.0)),
                **common,
            )
        else:
            raise ConfigError(f"unknown bandit kind {data['kind']!r}")
        if isinstance(policy, _MeanBandit):
            policy.total_sq = [float(v) for v in data["total_sq"]]
        if (
            len(data["n"]) != len(arms)
            or len(data["total"]) != len(arms)
            or len(data["weights"]) != len(arms)
        ):
            raise ConfigError("bandit state has counters of the wrong length")
        policy.n = [int(v) for v in data["n"]]
        policy.total = [float(v) for v in data["total"]]
        policy.removed = {str(arm): str(why) for arm, why in dict(data.get("removed") or {}).items()}
        policy.removed_at = {str(a): float(t) for a, t in dict(data.get("removed_at") or {}).items()}
        policy.removals = {str(a): int(n) for a, n in dict(data.get("removals") or {}).items()}
        policy.probation = {str(a): float(t) for a, t in dict(data.get("probation") or {}).items()}
        policy._set_weights([float(w) for w in data["weights"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed bandit state: {exc!r}") from exc
    return policy
