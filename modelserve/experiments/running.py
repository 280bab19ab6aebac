"""A running (or stopped) experiment: its spec, counters, bandit, and the arm each request gets.

Pure: no I/O, no clock (timestamps are passed in), no asyncio. The server's experiments feature
keeps one per model, persists `to_dict()` and restores it with `RunningExperiment.from_dict`.

Assignment: a fixed-weight experiment hashes ``(f"experiment:{model}:{id}", targeting key)`` into
10,000 sticky buckets and walks the cumulative arm weights, so a key gets the same arm on every
replica and after a restart, and a new experiment (new id) reshuffles keys. A bandit maps the same
bucket through its current weights (sticky while the weights hold). Requests without a targeting
key are assigned at random, and the decision's detail says so. While any arm is not loaded and
READY no request is assigned (`waiting` counts them): assigning only among the remaining arms would
skew the split and void the SRM check.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelserve.errors import ConfigError
from modelserve.experiments.bandits import (
    Bandit,
    EpsilonGreedy,
    GaussianThompsonSampling,
    ThompsonSampling,
    bandit_from_dict,
)
from modelserve.experiments.experiment import ExperimentCounters, ExperimentSpec, parse_experiment_spec
from modelserve.experiments.report import ExperimentReport, report
from modelserve.routing.decision import RouteDecision
from modelserve.routing.hashing import sticky_bucket

#: Resolution of sticky buckets (weights honoured to 0.01 percentage point), as for canaries.
BUCKETS = 10_000


def new_bandit(spec: ExperimentSpec, rng: np.random.Generator) -> Bandit | None:
    """The bandit for a `thompson` / `epsilon_greedy` spec (starting at the arms' weights), else None."""
    options = spec.bandit
    common: dict[str, Any] = {
        "rng": rng,
        "initial_weights": [arm.weight for arm in spec.arms],
        "floor": options.floor,
        "min_outcomes": options.min_outcomes,
        "reweight_every": options.reweight_every,
        "higher_is_better": spec.metric.higher_is_better,
    }
    if spec.policy == "thompson" and spec.metric.kind == "binary":
        return ThompsonSampling(spec.versions, **common)
    if spec.policy == "thompson":
        return GaussianThompsonSampling(spec.versions, **common)
    if spec.policy == "epsilon_greedy":
        return EpsilonGreedy(
            spec.versions, epsilon=options.epsilon, epsilon_decay=options.epsilon_decay, **common
        )
    return None


class RunningExperiment:
    """One experiment of one model; mutated from the event loop only (like the feedback join)."""

    def __init__(
        self,
        spec: ExperimentSpec,
        *,
        experiment_id: str,
        started_at: float,
        rng: np.random.Generator,
        counters: ExperimentCounters | None = None,
        bandit: Bandit | None = None,
        stopped_at: float | None = None,
    ) -> None:
        self.spec = spec
        self.experiment_id = experiment_id
        self.started_at = started_at
        self.stopped_at = stopped_at
        self.counters = counters if counters is not None else ExperimentCounters(spec)
        self.bandit = bandit if bandit is not None else new_bandit(spec, rng)
        self.reason = "experiment" if spec.policy == "fixed" else "bandit"
        self.namespace = f"experiment:{spec.model}:{experiment_id}"
        self.waiting = 0  # requests not assigned because an arm was not ready
        self._rng = rng
        self._cumulative = tuple(itertools.accumulate(arm.weight for arm in spec.arms))

    @property
    def running(self) -> bool:
        return self.stopped_at is None

    def missing_arms(self, ready: frozenset[str]) -> list[str]:
        """Arms that are not loaded and READY (assignment waits for them)."""
        return [version for version in self.spec.versions if version not in ready]

    def assign(self, targeting_key: str | None, ready: frozenset[str]) -> RouteDecision | None:
        """The arm for one request, or None (fall through to canary/stable) while an arm is not ready."""
        spec = self.spec
        for version in spec.versions:
            if version not in ready:
                self.waiting += 1
                return None
        if targeting_key is not None:
            bucket = sticky_bucket(self.namespace, targeting_key, BUCKETS)
            point = bucket / BUCKETS
            how = f"bucket {bucket} of {BUCKETS}"
        else:
            point = float(self._rng.random())
            how = "no targeting key, random assignment"
        if self.bandit is not None:
            arm = self.bandit.choose(point)
        else:
            index = bisect.bisect_right(self._cumulative, point * self._cumulative[-1])
            arm = spec.arms[min(index, len(spec.arms) - 1)].version
        return RouteDecision(
            model=spec.model,
            version=arm,
            reason=self.reason,
            targeting_key=targeting_key,
            arm=arm,
            detail=f"experiment {self.experiment_id}: {how} -> arm {arm}",
        )

    def report(self) -> ExperimentReport:
        """The statistics so far (always-valid: safe to read at any time)."""
        return report(self.spec, self.counters, bandit=self.bandit)

    def describe(self) -> dict[str, Any]:
        """Identity and configuration, without the counters."""
        return {
            "id": self.experiment_id,
            "state": "running" if self.running else "stopped",
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "waiting": self.waiting,
            "spec": self.spec.to_dict(),
        }

    def summary(self, ready: frozenset[str]) -> str:
        """One line for status pages: state, arms with assignments and outcomes, verdict."""
        bandit = self.bandit
        weights = bandit.weights() if bandit is not None else {a.version: a.weight for a in self.spec.arms}
        removed = bandit.removed if bandit is not None else {}
        probation = bandit.probation if bandit is not None else {}
        arms = " / ".join(
            f"{arm.version} ({weights[arm.version] * 100:.3g}%: "
            f"{self.counters.arms[arm.version].assigned:,} assigned, "
            f"{self.counters.arms[arm.version].metric.n:,} outcomes"
            + (", removed from the draw" if arm.version in removed else "")
            + (", on probation at the floor weight" if arm.version in probation else "")
            + ")"
            for arm in self.spec.arms
        )
        state = "running" if self.running else "stopped"
        missing = self.missing_arms(ready) if self.running else []
        if missing:
            state = f"waiting (arm {', '.join(missing)} not loaded and ready)"
        result = self.report()
        verdict = result.verdict + (f": {result.winner}" if result.winner else "")
        return (
            f"experiment {self.experiment_id} {state}, {self.spec.policy}, metric {self.spec.metric.name}: "
            f"{arms}; verdict {verdict}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able state (spec, counters, bandit); restore with `from_dict`."""
        return {
            "id": self.experiment_id,
            "state": "running" if self.running else "stopped",
            "started_at": self.started_at,
            "stopped_at": self.stopped_at,
            "spec": self.spec.to_dict(),
            "counters": self.counters.to_dict(),
            "bandit": self.bandit.to_dict() if self.bandit is not None else None,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, rng: np.random.Generator) -> RunningExperiment:
        """Rebuild from `to_dict()`; raises ConfigError on a malformed document."""
        try:
            spec = parse_experiment_spec(data["spec"])
            bandit_state = data.get("bandit")
            bandit = bandit_from_dict(bandit_state, rng=rng) if bandit_state is not None else None
            stopped_at = data.get("stopped_at")
            return cls(
                spec,
                experiment_id=str(data["id"]),
                started_at=float(data["started_at"]),
                stopped_at=float(stopped_at) if stopped_at is not None else None,
                rng=rng,
                counters=ExperimentCounters.from_dict(spec, data["counters"]),
                bandit=bandit,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed experiment state: {exc!r}") from exc
