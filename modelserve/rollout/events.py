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


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def format_gate(result: GateResult) -> str:
    """One gate result on one line: verdict, observed vs limit, baseline and samples."""
    text = f"{result.gate}: {result.verdict} observed={_number(result.observed)}"
    text += f" limit={_number(result.threshold)}"
    if result.baseline_samples is not None:
        text += f" baseline={_number(result.baseline)} (n={result.baseline_samples})"
    text += f" n={result.samples}/{result.required_samples}"
    return text + (" [dry-run]" if result.dry_run else "")


def format_timeline(events: list[RolloutEvent], *, with_gates: bool = True) -> str:
    """The events as text, times relative to the first, each gate's numbers indented below."""
    if not events:
        return "(no events)"
    start = events[0].time
    lines = []
    for event in events:
        head = f"+{event.time - start:8.1f}s  {event.kind:<15} {event.stage:<12} {event.weight:>3}%"
        lines.append(f"{head}  {event.message}")
        if with_gates:
            lines.extend(f"{'':28}{format_gate(g)}" for g in event.gates)
    return "\n".join(lines)
