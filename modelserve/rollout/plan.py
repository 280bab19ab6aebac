"""Rollout plans: ordered stages, each with a minimum duration, a minimum sample count and gates.

A plan is a TOML file (read with tomllib) or the built-in `default` plan. Format::

    name = "fast"
    interval_s = 1.0        # how often the controller evaluates the gates
    window_s = 10.0         # the longest window a look takes (it sees everything since its stage began)
    time_scale = 1.0        # optional: multiplies interval_s, window_s and every min_duration_s
    request_timeout_s = 0.5 # optional: the model's request deadline while the rollout runs (below)

    # Gates checked in every stage. Leave out every [[gates]] table to get the default gates;
    # write `gates = []` for none. A gate on `shadow_agreement` applies only to shadow stages.
    [[gates]]
    name = "error_rate_vs_baseline"
    metric = "error_rate"   # error_rate | timeout_rate | p50 | p95 | p99 | shadow_agreement | experiment
                            # | accuracy
    mode = "relative"       # relative: worse than the baseline by more than the margin fails (below)
    threshold = 2.0         # relative: the allowed ratio; absolute: the limit itself
    floor = 0.005           # relative gates only: the smallest allowed excess, in the metric's unit
    confidence = 0.95       # of the confidence sequences behind the verdict (valid at every look)
    failure_limit = 0       # failed evaluations tolerated in a stage; one more rolls back
    consecutive_successes = 1   # passes in a row needed before the stage may complete
    min_samples = 0         # 0: the stage's min_samples
    dry_run = false         # evaluate and log, never act (neither rolls back nor holds the stage)

    [[stages]]
    name = "shadow"
    shadow = true           # the candidate runs in shadow; its metrics come from role "shadow"
    min_duration_s = 5
    min_samples = 50
    max_duration_s = 60     # still undecided after this long: pause (0: 10 x min, at least 60 s)
    [[stages.gates]]        # extra gates for this stage; same name as a [[gates]] entry replaces it
    name = "agreement"
    metric = "shadow_agreement"
    mode = "absolute"
    threshold = 0.85

    [[stages]]
    name = "canary-5"
    weight = 5              # percent of traffic routed to the candidate
    min_duration_s = 5
    min_samples = 20

Thresholds: rates are fractions (0.01 = 1 %), latencies are seconds, `shadow_agreement` is a minimum
(fraction of shadow results that agreed with the primary), `experiment` fails when the experiment
says the candidate is significantly worse (it has no threshold). `accuracy` is judged on true labels
posted back (`POST /v2/models/{model}/labels`) since the rollout began: absolute, `threshold` is the
minimum accuracy (a fraction); relative, the candidate may fall below the live version's accuracy by
at most `max((1 - threshold) x live accuracy, floor)` (`threshold` defaults to 1, so `floor = 0.02`
allows two points). Its `min_samples` counts labelled rows (of each version, when relative).

The practical margin of a relative gate is what "worse" must exceed before it counts, and never
divides (a baseline of 0 is well defined): for rates the candidate may exceed the baseline by
`max((threshold - 1) x baseline, floor)`; for latency quantiles the candidate's quantile may reach
`max(threshold x baseline, baseline + floor)`, so the ratio governs slow (ms) models and the
absolute floor keeps scheduler noise on µs models from counting. How the statistics decide (pass,
fail, inconclusive) is in `modelserve.rollout.gates`.

`request_timeout_s` (seconds, > 0, at most 3600; not scaled by `time_scale`: it is about requests,
not the rollout's pace) replaces the model's `[serving] request_timeout_ms` while the rollout runs,
for the live version and the candidate alike (a 504 counts as a timeout and an error of the version
that missed it, so the timeout gates compare both under one deadline). Shadow runs keep their
`[shadow] timeout_ms` (their clock starts at admission to a low-priority pool, and a shadow stage
judges a slow candidate by the p95 of its compute time). It is part of the model's routing policy,
so every replica applies it; the controller sets it before the first stage's traffic and clears it
when the rollout is promoted, rolled back or aborted. Without it the config deadline applies.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelserve.validation as validation
from modelserve.errors import ConfigError

#: Metrics where a bigger value is worse (checked against an upper limit).
UPPER_LIMIT_METRICS = ("error_rate", "timeout_rate", "p50", "p95", "p99")
#: Metrics from outcomes posted back (true labels); a bigger value is better.
OUTCOME_METRICS = ("accuracy",)
#: Every metric a gate may check.
METRICS = (*UPPER_LIMIT_METRICS, "shadow_agreement", "experiment", *OUTCOME_METRICS)
MODES = ("relative", "absolute")
#: Bounds on a plan's timing (after time_scale): faster evaluation busy-loops a core.
MIN_INTERVAL_S = 0.01
MAX_DURATION_S = 30 * 86400.0
MAX_TIME_SCALE = 1e4


@dataclass(frozen=True, slots=True, kw_only=True)
class GateSpec:
    """One check of a stage; see the module docstring for the meaning of each field."""

    name: str
    metric: str
    mode: str = "absolute"
    threshold: float = 0.0
    floor: float = 0.0
    failure_limit: int = 0
    consecutive_successes: int = 1
    min_samples: int = 0
    dry_run: bool = False
    confidence: float = 0.95


@dataclass(frozen=True, slots=True, kw_only=True)
class Stage:
    """One step of a rollout: shadow the candidate, or route `weight` percent of traffic to it."""

    name: str
    weight: int = 0
    shadow: bool = False
    min_duration_s: float = 60.0
    min_samples: int = 100
    gates: tuple[GateSpec, ...] = ()
    max_duration_s: float = 0.0

    @property
    def pause_after_s(self) -> float:
        """How long the stage may stay undecided before the rollout pauses (`max_duration_s`, or else
        10 x `min_duration_s` but at least a minute)."""
        return self.max_duration_s or max(10.0 * self.min_duration_s, 60.0)


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutPlan:
    """An ordered list of stages; passing the last one promotes the candidate."""

    name: str
    stages: tuple[Stage, ...]
    interval_s: float = 5.0
    window_s: float = 60.0
    time_scale: float = 1.0
    #: The model's request deadline while the rollout runs (None: each version's config.toml one).
    request_timeout_s: float | None = None

    def scaled(self, factor: float) -> RolloutPlan:
        """The same plan with every duration (interval, window, stage minimums) multiplied by `factor`."""
        if factor <= 0:
            raise ConfigError(f"time scale must be > 0, not {factor}")
        return dataclasses.replace(
            self,
            interval_s=self.interval_s * factor,
            window_s=self.window_s * factor,
            time_scale=self.time_scale * factor,
            stages=tuple(
                dataclasses.replace(
                    s, min_duration_s=s.min_duration_s * factor, max_duration_s=s.max_duration_s * factor
                )
                for s in self.stages
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        """A dict that `plan_from_dict` reads back into an equal plan (durations already scaled)."""
        return {
            "name": self.name,
            "interval_s": self.interval_s,
            "window_s": self.window_s,
            "applied_time_scale": self.time_scale,
            "request_timeout_s": self.request_timeout_s,
            "gates": [],
            "stages": [
                {
                    "name": s.name,
                    "weight": s.weight,
                    "shadow": s.shadow,
                    "min_duration_s": s.min_duration_s,
                    "min_samples": s.min_samples,
                    "max_duration_s": s.max_duration_s,
                    "gates": [dataclasses.asdict(g) for g in s.gates],
                }
                for s in self.stages
            ],
        }


#: The default practical floor of latency gates: a quarter millisecond more at p95 is noise
#: (a thread hop, a GC pause), more than that is a regression on µs and ms models alike.
LATENCY_FLOOR_S = 0.00025
#: The default practical floor of error and timeout rate gates: half a percentage point.
RATE_FLOOR = 0.005


def default_gates() -> tuple[GateSpec, ...]:
    """The gates every stage of the default plan checks (agreement applies to shadow stages only).

    No p99 gate by default: a p99 needs at least 500 samples per stage before it says anything.
    """
    return (
        GateSpec(
            name="error_rate_vs_baseline", metric="error_rate", mode="relative", threshold=2.0,
            floor=RATE_FLOOR,
        ),
        GateSpec(name="p95_vs_baseline", metric="p95", mode="relative", threshold=1.5, floor=LATENCY_FLOOR_S),
        GateSpec(
            name="timeout_rate_vs_baseline", metric="timeout_rate", mode="relative", threshold=2.0,
            floor=RATE_FLOOR,
        ),
        GateSpec(name="error_rate_absolute", metric="error_rate", mode="absolute", threshold=0.01),
        GateSpec(name="shadow_agreement", metric="shadow_agreement", mode="absolute", threshold=0.85),
    )  # fmt: skip


def experiment_gate(*, dry_run: bool = False) -> GateSpec:
    """The optional "not significantly worse" gate, fed by a running experiment (off by default)."""
    return GateSpec(name="experiment_not_worse", metric="experiment", dry_run=dry_run)


def default_plan() -> RolloutPlan:
    """shadow -> 5 % -> 25 % -> 50 % -> 100 %, one minute each at least, gated by `default_gates()`.

    Each look sees everything since its stage began, up to ten minutes; a stage still undecided
    after ten minutes pauses the rollout.

    The shadow stage waits for 1,000 comparisons: users never see a shadow, and it is the only
    stage with the power to tell a 0.5 % error rate from 2.5 % on low traffic (at 5 requests/s the
    5 % stage sees 150 requests in ten minutes). With 200, a candidate failing 2.5 % of requests
    passed it whenever its first few hundred comparisons happened to look fine (`benchmarks/gates.py`).
    """
    gates = default_gates()
    return RolloutPlan(
        name="default",
        interval_s=5.0,
        window_s=600.0,
        stages=(
            _with_gates(Stage(name="shadow", shadow=True, min_duration_s=60.0, min_samples=1000), gates),
            _with_gates(Stage(name="canary-5", weight=5, min_duration_s=60.0, min_samples=100), gates),
            _with_gates(Stage(name="canary-25", weight=25, min_duration_s=60.0, min_samples=200), gates),
            _with_gates(Stage(name="canary-50", weight=50, min_duration_s=60.0, min_samples=400), gates),
            _with_gates(Stage(name="full", weight=100, min_duration_s=60.0, min_samples=400), gates),
        ),
    )


def _with_gates(stage: Stage, gates: tuple[GateSpec, ...]) -> Stage:
    applicable = tuple(g for g in gates if stage.shadow or g.metric != "shadow_agreement")
    return dataclasses.replace(stage, gates=applicable)


def load_plan(source: str | Path) -> RolloutPlan:
    """`"default"` or the path of a TOML plan file."""
    if str(source) == "default":
        return default_plan()
    path = Path(source)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read rollout plan {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"rollout plan {path} is not valid TOML: {exc}") from exc
    return plan_from_dict(data, default_name=path.stem, where=str(path))


_PLAN_KEYS = {
    "name", "interval_s", "window_s", "time_scale", "applied_time_scale", "request_timeout_s", "gates",
    "stages",
}  # fmt: skip
_STAGE_KEYS = {"name", "weight", "shadow", "min_duration_s", "min_samples", "max_duration_s", "gates"}
_GATE_KEYS = {f.name for f in dataclasses.fields(GateSpec)}


def plan_from_dict(data: dict[str, Any], *, default_name: str = "plan", where: str = "plan") -> RolloutPlan:
    """Parse and validate a plan (the TOML format above); raises ConfigError naming the bad field."""
    _no_unknown_keys(data, _PLAN_KEYS, where)
    common = (
        default_gates()
        if "gates" not in data
        else tuple(
            _gate(g, f"{where}: gates[{i}]") for i, g in enumerate(_list(data["gates"], f"{where}: gates"))
        )
    )
    raw_stages = _list(data.get("stages"), f"{where}: stages")
    if len({g.name for g in common}) != len(common):
        raise ConfigError(f"{where}: gate names must be unique")
    if not raw_stages:
        raise ConfigError(f"{where}: a plan needs at least one [[stages]] table")
    stages = tuple(_stage(s, common, f"{where}: stages[{i}]") for i, s in enumerate(raw_stages))
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: stage names must be unique, got {names}")
    plan = RolloutPlan(
        name=_str(data.get("name", default_name), f"{where}: name"),
        stages=stages,
        interval_s=_positive(data.get("interval_s", 5.0), f"{where}: interval_s"),
        window_s=_positive(data.get("window_s", 60.0), f"{where}: window_s"),
        time_scale=_positive(data.get("applied_time_scale", 1.0), f"{where}: applied_time_scale"),
        request_timeout_s=_request_timeout(data.get("request_timeout_s"), f"{where}: request_timeout_s"),
    )
    if "time_scale" in data:
        factor = validation.number(
            data["time_scale"], f"{where}: time_scale", low=0.0, high=MAX_TIME_SCALE, low_open=True,
            error=ConfigError,
        )  # fmt: skip
        plan = plan.scaled(factor)
    if not MIN_INTERVAL_S <= plan.interval_s <= MAX_DURATION_S:
        raise ConfigError(
            f"{where}: interval_s (after time_scale) must be within {MIN_INTERVAL_S}..{MAX_DURATION_S:g} s, "
            f"got {plan.interval_s:g}: a shorter interval busy-loops the controller"
        )
    durations = [plan.window_s, *(stage.min_duration_s for stage in plan.stages)]
    if not all(d <= MAX_DURATION_S for d in durations):
        raise ConfigError(f"{where}: durations (after time_scale) must be at most {MAX_DURATION_S:g} s")
    return plan


def _stage(raw: Any, common: tuple[GateSpec, ...], where: str) -> Stage:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a stage must be a table")
    _no_unknown_keys(raw, _STAGE_KEYS, where)
    shadow = raw.get("shadow", False)
    if not isinstance(shadow, bool):
        raise ConfigError(f"{where}: shadow must be true or false")
    weight = raw.get("weight", 0)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 100:
        raise ConfigError(f"{where}: weight must be an integer percentage 0..100, got {weight!r}")
    if not shadow and weight == 0:
        raise ConfigError(f"{where}: a stage needs shadow = true or a weight above 0")
    own = tuple(_gate(g, f"{where}: gates[{i}]") for i, g in enumerate(_list(raw.get("gates", []), where)))
    own_names = {g.name for g in own}
    gates = tuple(g for g in common if g.name not in own_names) + own
    if len(own_names) != len(own):
        raise ConfigError(f"{where}: gate names must be unique within a stage")
    stage = Stage(
        name=_str(raw.get("name"), f"{where}: name"),
        weight=weight,
        shadow=shadow,
        min_duration_s=_non_negative(raw.get("min_duration_s", 60.0), f"{where}: min_duration_s"),
        min_samples=_count(raw.get("min_samples", 100), f"{where}: min_samples", minimum=1),
        max_duration_s=_non_negative(raw.get("max_duration_s", 0.0), f"{where}: max_duration_s"),
    )
    if stage.max_duration_s and stage.max_duration_s < stage.min_duration_s:
        raise ConfigError(f"{where}: max_duration_s must be 0 or >= min_duration_s")
    return _with_gates(stage, gates)


def _gate(raw: Any, where: str) -> GateSpec:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: a gate must be a table")
    _no_unknown_keys(raw, _GATE_KEYS, where)
    metric = raw.get("metric")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    mode = raw.get("mode", "absolute")
    if mode not in MODES:
        raise ConfigError(f"{where}: mode must be 'relative' or 'absolute', got {mode!r}")
    if mode == "relative" and metric not in (*UPPER_LIMIT_METRICS, *OUTCOME_METRICS):
        raise ConfigError(f"{where}: metric {metric!r} has no baseline to be relative to")
    default = 1.0 if metric in OUTCOME_METRICS and mode == "relative" else None
    threshold = (
        0.0 if metric == "experiment" else _positive(raw.get("threshold", default), f"{where}: threshold")
    )
    if metric in ("shadow_agreement", *OUTCOME_METRICS) and threshold > 1.0:
        raise ConfigError(f"{where}: a {metric} threshold is a fraction <= 1, got {threshold}")
    dry_run = raw.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ConfigError(f"{where}: dry_run must be true or false")
    confidence = _number(raw.get("confidence", 0.95), f"{where}: confidence")
    if not 0.5 <= confidence < 1.0:
        raise ConfigError(f"{where}: confidence must lie in [0.5, 1), got {confidence}")
    return GateSpec(
        name=_str(raw.get("name"), f"{where}: name"),
        metric=metric,
        mode=mode,
        threshold=threshold,
        floor=_non_negative(raw.get("floor", 0.0), f"{where}: floor"),
        failure_limit=_count(raw.get("failure_limit", 0), f"{where}: failure_limit", minimum=0),
        consecutive_successes=_count(
            raw.get("consecutive_successes", 1), f"{where}: consecutive_successes", 1
        ),
        min_samples=_count(raw.get("min_samples", 0), f"{where}: min_samples", minimum=0),
        dry_run=dry_run,
        confidence=confidence,
    )


def _request_timeout(value: Any, where: str) -> float | None:
    """None when left out (the saved form writes null too), else a deadline within (0, 1 h]."""
    return None if value is None else validation.request_timeout_s(value, where, error=ConfigError)


def _no_unknown_keys(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected an array of tables")
    return value


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: expected a non-empty string, got {value!r}")
    return value


def _number(value: Any, where: str) -> float:
    return validation.number(value, where, error=ConfigError)  # finite and not absurd


def _positive(value: Any, where: str) -> float:
    number = _number(value, where)
    if number <= 0:
        raise ConfigError(f"{where}: must be > 0, got {value!r}")
    return number


def _non_negative(value: Any, where: str) -> float:
    number = _number(value, where)
    if number < 0:
        raise ConfigError(f"{where}: must be >= 0, got {value!r}")
    return number


def _count(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= 2**53:
        raise ConfigError(f"{where}: expected an integer >= {minimum}, got {value!r}")
    return value
