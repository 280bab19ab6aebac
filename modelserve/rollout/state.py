"""One rollout's mutable bookkeeping, and its durable form (the `rollout.<model>` state document).

The controller alone mutates a `Rollout`, from the event loop. What survives a restart is what
`to_state()` returns: plan, stage, state and reason, per-gate failure counts and pass streaks, and the
last baseline window (so a 100 % stage still has a baseline after a restart). Monotonic times do not
survive a process, so the stage clock restarts on restore (see `RolloutController.restore`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from modelserve.errors import ConfigError
from modelserve.rollout.events import RUNNING, RolloutStatus
from modelserve.rollout.gates import FAIL, PASS, GateResult
from modelserve.rollout.plan import RolloutPlan, Stage, plan_from_dict
from modelserve.rollout.sample import Sample

STATE_FORMAT = 1


@dataclass(slots=True, kw_only=True)
class Rollout:
    """A rollout in progress or finished (mutable; owned by the controller)."""

    model: str
    candidate: str
    baseline_version: str
    plan: RolloutPlan
    started_at: float
    stage_started: float
    next_due: float = 0.0
    stage_index: int = 0
    stage_started_at: float = 0.0
    state: str = RUNNING
    reason: str = ""
    failures: dict[str, int] = field(default_factory=dict)
    passes: dict[str, int] = field(default_factory=dict)
    last_results: tuple[GateResult, ...] = ()
    last_verdicts: tuple[str, ...] = ()
    last_gate_event: float = -math.inf
    frozen_baseline: Sample | None = None
    last_saved: dict[str, Any] | None = None
    #: Events emitted so far: the next event's sequence number (part of its id).
    event_seq: int = 0

    def next_event_id(self, kind: str) -> str:
        """A fleet-unique, deterministic id for the next event: `model:rollout start ms:seq:kind`."""
        event_id = f"{self.model}:{int(self.started_at * 1000)}:{self.event_seq}:{kind}"
        self.event_seq += 1
        return event_id

    #: Stages an operator skipped (`promote`), in order: named in the final reason, never "passed".
    skipped: list[str] = field(default_factory=list)
    plan_document: dict[str, Any] | None = None  # `plan.to_dict()`, made once: the plan never changes

    @property
    def stage(self) -> Stage:
        """The current stage."""
        return self.plan.stages[self.stage_index]

    def enter_stage(self, index: int, now: float, wall: float) -> None:
        """Move to stage `index`: its clock starts now and every gate counter starts from zero."""
        self.stage_index = index
        self.stage_started = now
        self.stage_started_at = wall
        self.failures, self.passes = {}, {}
        self.last_results, self.last_verdicts, self.last_gate_event = (), (), -math.inf

    def record_results(self, results: tuple[GateResult, ...]) -> None:
        """Count failures and pass streaks; an inconclusive result breaks a streak."""
        self.last_results = results
        for result in results:
            if result.verdict == PASS:
                self.passes[result.gate] = self.passes.get(result.gate, 0) + 1
            else:
                self.passes[result.gate] = 0
                if result.verdict == FAIL:
                    self.failures[result.gate] = self.failures.get(result.gate, 0) + 1

    def stage_complete(self, now: float, candidate_requests: int) -> bool:
        """Minimum duration and samples reached, and every acting gate on a long enough pass streak."""
        stage = self.stage
        return (
            now - self.stage_started >= stage.min_duration_s
            and candidate_requests >= stage.min_samples
            and all(
                self.passes.get(g.name, 0) >= g.consecutive_successes for g in stage.gates if not g.dry_run
            )
        )

    def status(self, now: float) -> RolloutStatus:
        """A frozen snapshot for `status`."""
        stage = self.stage
        active = self.state in ("running", "paused")
        return RolloutStatus(
            model=self.model,
            candidate=self.candidate,
            baseline_version=self.baseline_version,
            plan=self.plan.name,
            state=self.state,
            reason=self.reason,
            stage=stage.name,
            stage_index=self.stage_index,
            stage_count=len(self.plan.stages),
            weight=stage.weight if active or self.state == "promoted" else 0,
            shadow=stage.shadow and active,
            stage_elapsed_s=max(0.0, now - self.stage_started),
            gates=self.last_results,
            failures=dict(self.failures),
            passes=dict(self.passes),
        )

    def _plan_document(self) -> dict[str, Any]:
        if self.plan_document is None:
            self.plan_document = self.plan.to_dict()
        return self.plan_document

    def to_state(self) -> dict[str, Any]:
        """The durable document; equal documents mean nothing worth saving changed."""
        return {
            "format": STATE_FORMAT,
            "model": self.model,
            "candidate": self.candidate,
            "baseline_version": self.baseline_version,
            "plan": self._plan_document(),
            "state": self.state,
            "reason": self.reason,
            "stage_index": self.stage_index,
            "stage": self.stage.name,
            "started_at": self.started_at,
            "stage_started_at": self.stage_started_at,
            "failures": dict(self.failures),
            "passes": dict(self.passes),
            "frozen_baseline": self.frozen_baseline.to_dict() if self.frozen_baseline else None,
            "skipped": list(self.skipped),
            "event_seq": self.event_seq,
        }


def rollout_from_state(
    saved: dict[str, Any], now: float, wall: float, *, keep_clock: bool = False
) -> Rollout:
    """Rebuild a rollout from `to_state()`; the stage clock and pass streaks restart at `now`.

    With `keep_clock` (a new leader taking over, whose gate data spans the whole fleet) the stage
    keeps the time it already ran, from the saved wall-clock start of the stage.
    """
    try:
        if saved.get("format") != STATE_FORMAT:
            raise ValueError(f"unknown state format {saved.get('format')!r}")
        plan = plan_from_dict(saved["plan"], where="saved rollout plan")
        index = int(saved["stage_index"])
        if not 0 <= index < len(plan.stages):
            raise ValueError(f"stage index {index} outside the plan's {len(plan.stages)} stages")
        baseline = saved.get("frozen_baseline")
        return Rollout(
            model=str(saved["model"]),
            candidate=str(saved["candidate"]),
            baseline_version=str(saved["baseline_version"]),
            plan=plan,
            started_at=float(saved["started_at"]),
            stage_started=now - (max(0.0, wall - float(saved["stage_started_at"])) if keep_clock else 0.0),
            stage_started_at=float(saved["stage_started_at"]) if keep_clock else wall,
            next_due=now,
            stage_index=index,
            state=str(saved["state"]),
            reason=str(saved.get("reason", "")),
            failures={str(k): int(v) for k, v in dict(saved.get("failures", {})).items()},
            frozen_baseline=Sample.from_dict(baseline) if baseline else None,
            skipped=[str(name) for name in saved.get("skipped", ())],
            event_seq=int(saved.get("event_seq", 0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise ConfigError(f"saved rollout state is unreadable: {exc}") from exc
