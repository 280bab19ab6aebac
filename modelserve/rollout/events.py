"""Rollout events and status snapshots: the evidence behind every decision, and its timeline text.

Kinds of event:

    started          the rollout began; its first stage is applied
    gates            gate results (on any verdict change, and periodically while nothing changes)
    dry_run_failure  a dry-run gate failed; logged, never acted on
    advanced         every gate of a stage passed; the next stage is applied
    skipped          an operator skipped a stage (`promote`)
    paused, resumed  by an operator, or paused by `restore()` with the reason
    restored         the rollout was re-applied after a restart
    rolled_back      a gate failed beyond its failure limit; the candidate gets no traffic any more
    aborted          an operator stopped the rollout; the candidate gets no traffic any more
    promoted         the candidate is live
    error            the serving layer refused an action; the controller retries next interval
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from modelserve.rollout.gates import GateResult

logger = logging.getLogger("modelserve.rollout")

EVENT_KINDS = (
    "started",
    "gates",
    "dry_run_failure",
    "advanced",
    "skipped",
    "paused",
    "resumed",
    "restored",
    "rolled_back",
    "aborted",
    "promoted",
    "error",
)

#: Rollout states; the first two are active (one per model at a time).
RUNNING, PAUSED, PROMOTED, ROLLED_BACK, ABORTED = "running", "paused", "promoted", "rolled_back", "aborted"
ACTIVE_STATES = (RUNNING, PAUSED)


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutEvent:
    """One decision or observation of a rollout, with its evidence. `time` is wall-clock (epoch s)."""

    time: float
    model: str
    candidate: str
    kind: str
    stage: str
    stage_index: int
    weight: int
    message: str
    gates: tuple[GateResult, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    #: `model:rollout start ms:sequence:kind`: unique fleet-wide; logs and webhooks dedupe by it.
    event_id: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: what the event log stores and webhooks receive."""
        return {
            "time": self.time,
            "model": self.model,
            "candidate": self.candidate,
            "kind": self.kind,
            "stage": self.stage,
            "stage_index": self.stage_index,
            "weight": self.weight,
            "message": self.message,
            "gates": [g.to_dict() for g in self.gates],
            "data": self.data,
            "event_id": self.event_id,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RolloutEvent:
        """Read back what `to_dict` wrote (used when restoring the log after a restart)."""
        return cls(
            time=float(raw["time"]),
            model=str(raw["model"]),
            candidate=str(raw["candidate"]),
            kind=str(raw["kind"]),
            stage=str(raw["stage"]),
            stage_index=int(raw["stage_index"]),
            weight=int(raw["weight"]),
            message=str(raw.get("message", "")),
            gates=tuple(GateResult(**g) for g in raw.get("gates", ())),
            data=dict(raw.get("data", {})),
            event_id=str(raw.get("event_id", "")),
        )


def events_from_log(records: list[dict[str, Any]]) -> list[RolloutEvent]:
    """Events read back from the state store's log, skipping (and logging) unreadable records."""
    events = []
    for raw in records:
        try:
            events.append(RolloutEvent.from_dict(raw))
        except (KeyError, TypeError, ValueError):
            logger.warning("skipping an unreadable saved rollout event: %r", raw)
    return events


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutStatus:
    """A snapshot of one rollout for `status` and the admin API."""

    model: str
    candidate: str
    baseline_version: str
    plan: str
    state: str
    reason: str
    stage: str
    stage_index: int
    stage_count: int
    weight: int
    shadow: bool
    stage_elapsed_s: float
    gates: tuple[GateResult, ...]
    failures: dict[str, int]
    passes: dict[str, int]

    @property
    def active(self) -> bool:
        """True while the rollout is running or paused."""
        return self.state in ACTIVE_STATES


#: Metrics measured in seconds; people read them in milliseconds.
LATENCY_METRICS = frozenset({"p50", "p95", "p99", "latency"})


def _number(value: float | None, metric: str = "") -> str:
    if value is None:
        return "-"
    if metric in LATENCY_METRICS:
        return f"{value * 1e3:.4g} ms"
    return f"{value:.4g}"


def format_gate(result: GateResult) -> str:
    """One gate result on one line: verdict, observed vs limit, baseline, samples and the confidence
    intervals (of the candidate, and of its excess over the baseline when compared); latency in ms."""
    metric = result.metric
    text = f"{result.gate}: {result.verdict} observed={_number(result.observed, metric)}"
    text += f" limit={_number(result.threshold, metric)}"
    if result.baseline_samples is not None:
        text += f" baseline={_number(result.baseline, metric)} (n={result.baseline_samples})"
    text += f" n={result.samples}/{result.required_samples}"
    if result.interval is not None:
        text += f" interval={_bounds(result.interval, metric)}"
    if result.difference_interval is not None:
        text += f" excess={_bounds(result.difference_interval, metric)}"
    return text + (" [dry-run]" if result.dry_run else "")


def _bounds(bounds: list[float | None], unit: str) -> str:
    low, high = bounds
    lower = "-inf" if low is None else _number(low, unit)
    return f"[{lower}, {'inf' if high is None else _number(high, unit)}]"


def split_rollouts(events: list[RolloutEvent]) -> list[list[RolloutEvent]]:
    """The events grouped by rollout, oldest first: each group starts at a `started` event (the first
    group may lack one when the bounded log dropped its beginning)."""
    groups: list[list[RolloutEvent]] = []
    for event in events:
        if event.kind == "started" or not groups:
            groups.append([])
        groups[-1].append(event)
    return groups


def format_timeline(events: list[RolloutEvent], *, with_gates: bool = True) -> str:
    """The latest rollout's events as text, times from its start, each gate's numbers indented below.

    Earlier rollouts are left out (see `format_history`); stages skipped by an operator are named.
    """
    groups = split_rollouts(events)
    if not groups:
        return "(no events)"
    current = groups[-1]
    start = current[0].time
    lines = []
    for event in current:
        head = f"+{event.time - start:8.1f}s  {event.kind:<15} {event.stage:<12} {event.weight:>3}%"
        lines.append(f"{head}  {event.message}")
        if with_gates:
            lines.extend(f"{'':28}{format_gate(g)}" for g in event.gates)
    return "\n".join(lines)


def format_history(events: list[RolloutEvent]) -> str:
    """One line per rollout, newest first: when it started, the candidate, how it ended and after how long."""
    lines = []
    for group in reversed(split_rollouts(events)):
        first, last = group[0], group[-1]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(first.time))
        ending = last.kind if last.kind in _ENDINGS else "in progress"
        skipped = [name for e in group if e.kind == "skipped" for name in e.data.get("skipped", ())]
        extra = f"; skipped by an operator: {', '.join(skipped)}" if skipped else ""
        begin = "" if first.kind == "started" else " (log starts mid-rollout)"
        lines.append(
            f"{when} UTC  version {first.candidate}: {ending} after {last.time - first.time:.1f} s, "
            f"{len(group)} events{extra}{begin}"
        )
    return "\n".join(lines) if lines else "(no rollouts)"


_ENDINGS = frozenset({"promoted", "rolled_back", "aborted"})
