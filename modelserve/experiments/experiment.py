"""An experiment's configuration (`ExperimentSpec`) and its streaming counters (`ExperimentCounters`).

The first arm is the control ("A"); every other arm is compared with it. Counters are plain sums,
so they update in O(1) per outcome, merge nothing, and serialise to JSON for the state store.
`report.py` turns a spec and its counters into an `ExperimentReport`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import modelserve.validation as validation
from modelserve.errors import ConfigError, RequestError
from modelserve.rollout.plan import RolloutPlan, default_plan, plan_from_dict

METRIC_KINDS = ("binary", "continuous")
POLICIES = ("fixed", "thompson", "epsilon_greedy")


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """A metric: `binary` (conversion, correct: values 0/1) or `continuous` (revenue, latency)."""

    name: str
    kind: str = "binary"
    higher_is_better: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class ArmSpec:
    """One arm: a model version and its share of traffic (weights are normalised to sum to 1)."""

    version: str
    weight: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BanditOptions:
    """How a bandit explores: the traffic floor every arm keeps, epsilon and its decay (epsilon-greedy),
    and how many outcomes per arm before weights move and between two reweights. An arm the health
    gates removed returns on probation after `cooldown_s` (doubled after every further removal)."""

    floor: float = 0.01
    epsilon: float = 0.1
    epsilon_decay: float = 0.0
    min_outcomes: int = 100
    reweight_every: int = 100
    cooldown_s: float = 600.0


ON_WIN = ("rollout",)


@dataclass(frozen=True, slots=True, kw_only=True)
class ExperimentSpec:
    """An A/B(/n) experiment on one model. `mde` is the relative minimum detectable effect."""

    model: str
    arms: tuple[ArmSpec, ...]
    metric: MetricSpec
    guardrails: tuple[MetricSpec, ...] = ()
    mde: float = 0.05
    alpha: float = 0.05
    power: float = 0.8
    policy: str = "fixed"
    segments: tuple[str, ...] = ()
    bandit: BanditOptions = field(default_factory=BanditOptions)
    #: Stop (with an event) once this many seconds have passed since the start; None: never.
    max_duration_s: float | None = None
    #: Stop (with an event) as soon as the always-valid test reaches a verdict.
    auto_stop: bool = False
    #: "rollout": when a treatment arm wins, hand it to the rollout controller (with an event).
    on_win: str | None = None
    #: The plan of that rollout (validated when the experiment starts); None: the default plan.
    on_win_plan: RolloutPlan | None = None

    def hand_over_plan(self) -> RolloutPlan:
        """The rollout plan a winning arm is handed over with."""
        return self.on_win_plan if self.on_win_plan is not None else default_plan()

    @property
    def control(self) -> str:
        return self.arms[0].version

    @property
    def versions(self) -> tuple[str, ...]:
        return tuple(arm.version for arm in self.arms)

    def to_dict(self) -> dict[str, Any]:
        """The dict `parse_experiment_spec` accepts."""

        def metric(m: MetricSpec) -> dict[str, Any]:
            return {"name": m.name, "kind": m.kind, "higher_is_better": m.higher_is_better}

        return {
            "model": self.model,
            "arms": [{"version": a.version, "weight": a.weight} for a in self.arms],
            "metric": metric(self.metric),
            "guardrails": [metric(g) for g in self.guardrails],
            "mde": self.mde,
            "alpha": self.alpha,
            "power": self.power,
            "policy": self.policy,
            "segments": list(self.segments),
            "bandit": {
                "floor": self.bandit.floor,
                "epsilon": self.bandit.epsilon,
                "epsilon_decay": self.bandit.epsilon_decay,
                "min_outcomes": self.bandit.min_outcomes,
                "reweight_every": self.bandit.reweight_every,
                "cooldown_s": self.bandit.cooldown_s,
            },
            "max_duration_s": self.max_duration_s,
            "auto_stop": self.auto_stop,
            "on_win": self.on_win,
            "on_win_plan": None if self.on_win_plan is None else self.on_win_plan.to_dict(),
        }


def _metric(value: Any, where: str) -> MetricSpec:
    if isinstance(value, str):  # shorthand: just the kind
        value = {"name": value, "kind": value}
    if not isinstance(value, Mapping) or not isinstance(value.get("name"), str) or not value["name"]:
        raise ConfigError(f"{where} must be a kind string or a table with a non-empty 'name'")
    kind = value.get("kind", "binary")
    if kind not in METRIC_KINDS:
        raise ConfigError(f"{where}: kind must be one of {METRIC_KINDS}, got {kind!r}")
    higher = value.get("higher_is_better", True)
    if not isinstance(higher, bool):
        raise ConfigError(f"{where}: higher_is_better must be true or false")
    return MetricSpec(name=value["name"], kind=kind, higher_is_better=higher)


def _arms(value: Any) -> tuple[ArmSpec, ...]:
    if not isinstance(value, list) or len(value) < 2:
        raise ConfigError("'arms' must list at least two versions (the first is the control)")
    raw: list[tuple[str, float]] = []
    for item in value:
        if isinstance(item, str | int) and not isinstance(item, bool):
            raw.append((str(item), 1.0))
        elif isinstance(item, Mapping) and "version" in item:
            weight = validation.number(
                item.get("weight", 1.0), f"arm {str(item['version'])[:40]!r}: weight", low=0.0, high=1e6,
                low_open=True, error=ConfigError,
            )  # fmt: skip
            raw.append((str(item["version"]), weight))
        else:
            raise ConfigError(f"each arm must be a version or a table with 'version', got {item!r}")
    names = [name for name, _ in raw]
    if len(set(names)) != len(names):
        raise ConfigError(f"arms repeat a version: {names}")
    total = sum(w for _, w in raw)
    return tuple(ArmSpec(version=name, weight=w / total) for name, w in raw)


def _fraction(data: Mapping[str, Any], key: str, default: float) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise ConfigError(f"'{key}' must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


def parse_experiment_spec(data: Mapping[str, Any]) -> ExperimentSpec:
    """Build an `ExperimentSpec` from a dict (JSON/TOML); raises ConfigError naming the bad field."""
    if not isinstance(data, Mapping):
        raise ConfigError("an experiment must be a table")
    unknown = set(data) - {
        "model",
        "arms",
        "metric",
        "guardrails",
        "mde",
        "alpha",
        "power",
        "policy",
        "segments",
        "bandit",
        "max_duration_s",
        "auto_stop",
        "on_win",
        "on_win_plan",
    }
    if unknown:
        raise ConfigError(f"unknown experiment keys: {sorted(unknown)}")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ConfigError("'model' must be a non-empty string")
    if "metric" not in data:
        raise ConfigError("'metric' is required")
    guardrails = data.get("guardrails", [])
    if not isinstance(guardrails, list):
        raise ConfigError("'guardrails' must be a list")
    mde = validation.number(
        data.get("mde", 0.05), "'mde' (relative)", low=0.0, high=1e6, low_open=True, error=ConfigError
    )
    policy = data.get("policy", "fixed")
    if policy not in POLICIES:
        raise ConfigError(f"'policy' must be one of {POLICIES}, got {policy!r}")
    segments = data.get("segments", [])
    if not isinstance(segments, list) or not all(isinstance(s, str) and s for s in segments):
        raise ConfigError("'segments' must be a list of attribute names")
    spec = ExperimentSpec(
        model=model,
        arms=_arms(data.get("arms")),
        metric=_metric(data["metric"], "'metric'"),
        guardrails=tuple(_metric(g, f"guardrail {i}") for i, g in enumerate(guardrails)),
        mde=float(mde),
        alpha=_fraction(data, "alpha", 0.05),
        power=_fraction(data, "power", 0.8),
        policy=policy,
        segments=tuple(segments),
        bandit=_bandit_options(data.get("bandit", {})),
        max_duration_s=_max_duration(data.get("max_duration_s")),
        auto_stop=_flag(data, "auto_stop"),
        on_win=_on_win(data.get("on_win")),
        on_win_plan=_on_win_plan(data.get("on_win_plan"), data.get("on_win")),
    )
    names = [spec.metric.name, *(g.name for g in spec.guardrails)]
    if len(set(names)) != len(names):
        raise ConfigError(f"metric and guardrail names must differ: {names}")
    return spec


def _bandit_options(value: Any) -> BanditOptions:
    if not isinstance(value, Mapping):
        raise ConfigError(
            "'bandit' must be a table of floor, epsilon, epsilon_decay, min_outcomes, reweight_every, "
            "cooldown_s"
        )
    unknown = set(value) - {f.name for f in dataclasses.fields(BanditOptions)}
    if unknown:
        raise ConfigError(f"unknown bandit keys: {sorted(unknown)}")
    defaults = BanditOptions()

    def number(key: str, low: float, high: float) -> float:
        return validation.number(
            value.get(key, getattr(defaults, key)), f"bandit {key}", low=low, high=high, error=ConfigError
        )

    def count(key: str) -> int:
        raw = value.get(key, getattr(defaults, key))
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= 1_000_000:
            raise ConfigError(f"bandit {key} must be an integer in 1..1000000, got {raw!r}")
        return raw

    return BanditOptions(
        floor=number("floor", 0.0, 0.5),
        epsilon=number("epsilon", 0.0, 1.0),
        epsilon_decay=number("epsilon_decay", 0.0, 1e6),
        min_outcomes=count("min_outcomes"),
        reweight_every=count("reweight_every"),
        cooldown_s=number("cooldown_s", 0.001, 1e7),
    )


def _max_duration(value: Any) -> float | None:
    if value is None:
        return None
    return validation.number(value, "'max_duration_s'", low=0.0, high=1e9, low_open=True, error=ConfigError)


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"'{key}' must be true or false, got {value!r}")
    return value


def _on_win(value: Any) -> str | None:
    if value is not None and value not in ON_WIN:
        raise ConfigError(f"'on_win' must be one of {ON_WIN} or absent, got {value!r}")
    return value if value is None else str(value)


def _on_win_plan(value: Any, on_win: Any) -> RolloutPlan | None:
    """`"default"` or a plan object in the TOML plan format (the CLI reads plan files), checked now."""
    if value is None:
        return None
    if on_win != "rollout":
        raise ConfigError("'on_win_plan' needs 'on_win' = \"rollout\" (the plan of the hand-over rollout)")
    if value == "default":
        return default_plan()
    if not isinstance(value, Mapping):
        raise ConfigError("'on_win_plan' must be \"default\" or a rollout plan object (the CLI reads files)")
    return plan_from_dict(dict(value), default_name="custom", where="on_win_plan")


@dataclass(slots=True)
class MetricCounter:
    """Streaming count, sum and sum of squares of one metric's values (JSON-able)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    def add(self, value: float) -> None:
        """Count one value; RequestError (nothing changed) if a sum would stop being finite."""
        total, total_sq = self.total + value, self.total_sq + value * value
        if not (math.isfinite(total) and math.isfinite(total_sq)):
            raise RequestError(f"outcome {value!r} would overflow the running sums; nothing was counted")
        self.n += 1
        self.total, self.total_sq = total, total_sq

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """Sample variance (ddof=1); clamped at 0 against rounding."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    @property
    def successes(self) -> int:
        """For binary metrics: the number of 1s."""
        return round(self.total)

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricCounter:
        return cls(n=int(data["n"]), total=float(data["total"]), total_sq=float(data["total_sq"]))


@dataclass(slots=True)
class ArmCounters:
    """One arm's streaming counters: assignments, the primary metric, guardrails and segments.

    `segments[attribute][value]` counts the primary metric within that segment.
    """

    assigned: int = 0
    metric: MetricCounter = field(default_factory=MetricCounter)
    guardrails: dict[str, MetricCounter] = field(default_factory=dict)
    segments: dict[str, dict[str, MetricCounter]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "assigned": self.assigned,
            "metric": self.metric.to_dict(),
            "guardrails": {k: v.to_dict() for k, v in self.guardrails.items()},
            "segments": {a: {v: c.to_dict() for v, c in vals.items()} for a, vals in self.segments.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmCounters:
        return cls(
            assigned=int(data["assigned"]),
            metric=MetricCounter.from_dict(data["metric"]),
            guardrails={k: MetricCounter.from_dict(v) for k, v in data.get("guardrails", {}).items()},
            segments={
                a: {v: MetricCounter.from_dict(c) for v, c in vals.items()}
                for a, vals in data.get("segments", {}).items()
            },
        )


def _check_value(metric: MetricSpec, value: Any) -> float:
    if isinstance(value, bool):
        value = int(value)
    validation.number(value, f"outcome for {metric.name!r}")  # finite, |value| <= 1e15: sums stay finite
    if metric.kind == "binary" and value not in (0, 1):
        raise RequestError(f"outcome for binary metric {metric.name!r} must be 0 or 1, got {value!r}")
    return float(value)


class ExperimentCounters:
    """Counters of every arm of one experiment; mutated from the event loop only."""

    def __init__(self, spec: ExperimentSpec, arms: Mapping[str, ArmCounters] | None = None) -> None:
        self.spec = spec
        self.arms: dict[str, ArmCounters] = {v: ArmCounters() for v in spec.versions}
        for version, counters in (arms or {}).items():
            if version not in self.arms:
                raise ConfigError(f"saved counters name version {version!r}, which is not an arm")
            self.arms[version] = counters

    def record_assignment(self, arm: str) -> None:
        """Count one request routed to `arm` (the denominator of the SRM check)."""
        self._arm(arm).assigned += 1

    def validate_outcome(self, value: Any, guardrails: Mapping[str, Any] | None = None) -> None:
        """Raise RequestError if `record_outcome` would reject these values (nothing is counted)."""
        _check_value(self.spec.metric, value)
        by_name = {g.name: g for g in self.spec.guardrails}
        for name, gvalue in (guardrails or {}).items():
            if name not in by_name:
                raise RequestError(f"unknown guardrail metric {name!r}")
            _check_value(by_name[name], gvalue)

    def record_outcome(
        self,
        arm: str,
        value: Any,
        *,
        segments: Mapping[str, Any] | None = None,
        guardrails: Mapping[str, Any] | None = None,
    ) -> None:
        """Count one outcome; segment attributes not named in the spec are ignored."""
        counters = self._arm(arm)
        self.validate_outcome(value, guardrails)
        number = float(value)
        counters.metric.add(number)
        for name, gvalue in (guardrails or {}).items():
            counters.guardrails.setdefault(name, MetricCounter()).add(float(gvalue))
        for attribute in self.spec.segments:
            if segments and attribute in segments and segments[attribute] is not None:
                bucket = counters.segments.setdefault(attribute, {})
                bucket.setdefault(str(segments[attribute]), MetricCounter()).add(number)

    def _arm(self, arm: str) -> ArmCounters:
        try:
            return self.arms[arm]
        except KeyError:
            raise RequestError(f"{arm!r} is not an arm of the {self.spec.model!r} experiment") from None

    def to_dict(self) -> dict[str, Any]:
        return {"arms": {v: c.to_dict() for v, c in self.arms.items()}}

    @classmethod
    def from_dict(cls, spec: ExperimentSpec, data: Mapping[str, Any]) -> ExperimentCounters:
        """Restore counters saved by `to_dict()`; raises ConfigError on a malformed document."""
        try:
            arms = {str(v): ArmCounters.from_dict(c) for v, c in data["arms"].items()}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"malformed experiment counters: {exc!r}") from exc
        return cls(spec, arms)
