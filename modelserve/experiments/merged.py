"""An experiment's counters as flat additive fields, so every replica adds to one shared set.

`ExperimentCounters` (per arm: assignments, the metric's n / sum / sum of squares, the same per
guardrail and per segment value) becomes `{field: number}` where each field name is a JSON array:

    ["a", arm]                            assignments
    ["m", arm, "n" | "total" | "total_sq"]   the primary metric
    ["g", arm, guardrail, ...]            a guardrail metric
    ["s", arm, attribute, value, ...]     the primary metric within one segment value
    ["f", "accepted" | "unknown" | "duplicate"]   how posted outcomes fared

Every field only ever grows by increments (`Coordinator.incr`), so merging replicas is addition,
and `counters_from_fields` rebuilds the report's counters from the sums.

Precision: counts (assignments, n, and the sums of binary metrics, which are counts of 1s) are
integers and stay exact up to 2**53 in every backend. Sums of continuous values are IEEE doubles
(SQLite `REAL`; Redis keeps a long double and prints it with 17 significant digits): each flush
adds one batch's sum, so the merged sum carries a relative rounding error of about 1e-16 per flush,
the same order as one process adding the values one by one. Variances from `total_sq` share the
cancellation a single process has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from modelserve.experiments.experiment import ArmCounters, ExperimentCounters, ExperimentSpec, MetricCounter

Fields = dict[str, float]
FEEDBACK = ("accepted", "unknown", "duplicate")


def field(*parts: str) -> str:
    """The name of one additive field (a JSON array: unambiguous whatever the arm or segment names)."""
    return orjson.dumps(parts).decode()


def add(fields: Fields, name: str, amount: float) -> None:
    fields[name] = fields.get(name, 0.0) + amount


def add_assignment(fields: Fields, arm: str) -> None:
    add(fields, field("a", arm), 1)


def _add_metric(fields: Fields, prefix: tuple[str, ...], value: float) -> None:
    add(fields, field(*prefix, "n"), 1)
    add(fields, field(*prefix, "total"), value)
    add(fields, field(*prefix, "total_sq"), value * value)


def add_outcome(
    fields: Fields,
    spec: ExperimentSpec,
    arm: str,
    value: float,
    *,
    segments: Mapping[str, str],
    guardrails: Mapping[str, Any] | None,
) -> None:
    """Count one validated outcome as `ExperimentCounters.record_outcome` does."""
    _add_metric(fields, ("m", arm), float(value))
    for name, gvalue in (guardrails or {}).items():
        _add_metric(fields, ("g", arm, str(name)), float(gvalue))
    for attribute in spec.segments:
        if attribute in segments:
            _add_metric(fields, ("s", arm, attribute, str(segments[attribute])), float(value))


def _metric(found: dict[str, float]) -> MetricCounter:
    return MetricCounter(
        n=round(found.get("n", 0.0)), total=found.get("total", 0.0), total_sq=found.get("total_sq", 0.0)
    )


def counters_from_fields(spec: ExperimentSpec, fields: Mapping[str, float]) -> ExperimentCounters:
    """The experiment's counters from the merged sums (fields of arms not in `spec` are ignored)."""
    arms = {version: ArmCounters() for version in spec.versions}
    metric: dict[str, dict[str, float]] = {}
    guardrails: dict[tuple[str, str], dict[str, float]] = {}
    segments: dict[tuple[str, str, str], dict[str, float]] = {}
    for name, amount in fields.items():
        try:
            parts = orjson.loads(name)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(parts, list) or len(parts) < 2 or parts[1] not in arms:
            continue
        kind, arm = parts[0], parts[1]
        if kind == "a" and len(parts) == 2:
            arms[arm].assigned = round(amount)
        elif kind == "m" and len(parts) == 3:
            metric.setdefault(arm, {})[parts[2]] = amount
        elif kind == "g" and len(parts) == 4:
            guardrails.setdefault((arm, parts[2]), {})[parts[3]] = amount
        elif kind == "s" and len(parts) == 5:
            segments.setdefault((arm, parts[2], parts[3]), {})[parts[4]] = amount
    for arm, found in metric.items():
        arms[arm].metric = _metric(found)
    for (arm, name), found in sorted(guardrails.items()):
        arms[arm].guardrails[name] = _metric(found)
    for (arm, attribute, value), found in sorted(segments.items()):
        arms[arm].segments.setdefault(attribute, {})[value] = _metric(found)
    return ExperimentCounters(spec, arms)


def feedback_from_fields(fields: Mapping[str, float]) -> dict[str, int]:
    """How posted outcomes fared, fleet-wide: `{"accepted": n, "unknown": m, "duplicate": k}`."""
    return {kind: round(fields.get(field("f", kind), 0.0)) for kind in FEEDBACK}
