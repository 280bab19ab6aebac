"""A rollout plan written out as the TOML plan format (`modelserve rollout plan --show default`).

`plan_to_toml(plan)` is the inverse of reading a plan file: `plan_from_dict(tomllib.loads(text))`
gives back an equal plan. Gates shared by every stage are written once as top-level `[[gates]]`
(the loader applies a `shadow_agreement` gate to shadow stages only); otherwise each stage lists its
own gates. Units are in the comments: weights are percent, durations seconds, rates fractions.
"""

from __future__ import annotations

import dataclasses
import json

from modelserve.rollout.plan import GateSpec, RolloutPlan, Stage

_GATE_DEFAULTS = GateSpec(name="", metric="")
_UNITS = {
    "error_rate": "fraction of requests",
    "timeout_rate": "fraction of requests",
    "p50": "seconds",
    "p95": "seconds",
    "p99": "seconds",
    "shadow_agreement": "fraction of shadow comparisons, a minimum",
    "accuracy": "fraction of labelled rows, a minimum",
}


def plan_to_toml(plan: RolloutPlan) -> str:
    """The plan as TOML text that reads back into an equal plan."""
    lines = [
        f"# Rollout plan {plan.name!r}: {' -> '.join(_stage_label(s) for s in plan.stages)}.",
        "# Weights are percent of traffic, durations seconds; a gate's threshold is in its metric's unit",
        "# (rates are fractions: 0.01 = 1 %; latencies are seconds: 0.2 = 200 ms) or a ratio when relative;",
        "# a relative gate's floor is the smallest excess over the live version that counts.",
        f"name = {_value(plan.name)}",
        f"interval_s = {_value(plan.interval_s)}  # how often the gates are evaluated",
        f"window_s = {_value(plan.window_s)}  # the longest window a look takes (all since its stage began)",
    ]
    if plan.request_timeout_s is not None:
        lines.append(
            f"request_timeout_s = {_value(plan.request_timeout_s)}  # the request deadline while it runs"
        )
    shared = _shared_gates(plan)
    if shared is None:
        lines.append("gates = []  # every stage lists its own gates below")
    for gate in shared or ():
        lines += ["", "[[gates]]", *_gate_lines(gate)]
    for stage in plan.stages:
        lines += ["", "[[stages]]", f"name = {_value(stage.name)}"]
        if stage.shadow:
            lines.append("shadow = true  # the candidate runs beside the live version, unseen")
        if stage.weight:
            lines.append(f"weight = {stage.weight}  # percent of traffic")
        lines.append(f"min_duration_s = {_value(stage.min_duration_s)}")
        lines.append(f"min_samples = {stage.min_samples}")
        if stage.max_duration_s:
            lines.append(f"max_duration_s = {_value(stage.max_duration_s)}  # undecided this long: pause")
        if shared is None:
            for gate in stage.gates:
                lines += ["", "[[stages.gates]]", *_gate_lines(gate)]
    return "\n".join(lines) + "\n"


def _stage_label(stage: Stage) -> str:
    return "shadow" if stage.shadow and not stage.weight else f"{stage.weight}%"


def _shared_gates(plan: RolloutPlan) -> tuple[GateSpec, ...] | None:
    """The gates every stage has (agreement on shadow stages only), or None when stages differ."""
    widest = max((stage.gates for stage in plan.stages), key=len, default=())
    for stage in plan.stages:
        applicable = tuple(g for g in widest if stage.shadow or g.metric != "shadow_agreement")
        if stage.gates != applicable:
            return None
    return widest if widest else None


def _gate_lines(gate: GateSpec) -> list[str]:
    lines = []
    for field in dataclasses.fields(GateSpec):
        value = getattr(gate, field.name)
        if field.name not in ("name", "metric", "mode") and value == getattr(_GATE_DEFAULTS, field.name):
            continue
        line = f"{field.name} = {_value(value)}"
        if field.name == "threshold":
            unit = "ratio to the live version" if gate.mode == "relative" else _UNITS.get(gate.metric, "")
            line += f"  # {unit}" if unit else ""
        lines.append(line)
    return lines


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))
