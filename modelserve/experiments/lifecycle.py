"""What runs an experiment between its start and its stop: duration limit, auto-stop, hand-over, health.

`ExperimentSupervisor.check()` looks at every running experiment (a lifespan task calls it every
`interval_s`) and, each time with an event that carries its evidence:

- **max duration**: stops an experiment once `max_duration_s` have passed (`max_duration_reached`);
- **auto-stop**: with `auto_stop`, stops it as soon as the always-valid (mSPRT) test reaches a verdict
  ("B better", "A better" or "equivalent within MDE"; never on "inconclusive" or an SRM) (`concluded`);
- **hand-over**: with `on_win = "rollout"`, a treatment arm that won is handed to the rollout
  controller with the experiment's `on_win_plan` (else the default plan) (`handed_over` with the
  plan's name and stages, or `hand_over_failed` with the reason); the control winning hands nothing
  over;
- **health gates** (bandits): an arm whose serving window fails a health gate against the control's
  (error rate, timeouts, p95 relative; p99 and error rate absolute, as a rollout's default gates) is
  removed from the draw (`arm_removed`). Too few requests is inconclusive and removes nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from modelserve.experiments.report import A_BETTER, B_BETTER, EQUIVALENT
from modelserve.rollout.gates import FAIL, evaluate_gates
from modelserve.rollout.plan import RolloutPlan, Stage, default_gates
from modelserve.rollout.sample import Sample
from modelserve.telemetry.windows import SlidingWindows

if TYPE_CHECKING:
    from modelserve.experiments.service import ExperimentService

log = logging.getLogger("modelserve.experiments")

#: `(model, winning version, plan) -> a description of what was started` (the rollout controller's).
HandOver = Callable[[str, str, RolloutPlan], Awaitable[str]]
CONCLUSIVE = (B_BETTER, A_BETTER, EQUIVALENT)
HEALTH_WINDOW_S = 300.0
HEALTH_MIN_REQUESTS = 100


def health_stage(min_requests: int = HEALTH_MIN_REQUESTS) -> Stage:
    """The gates a bandit arm must pass to stay in the draw (a rollout's defaults, minus shadow agreement)."""
    gates = tuple(g for g in default_gates() if g.metric != "shadow_agreement")
    return Stage(name="bandit-arm-health", min_samples=min_requests, gates=gates)


class ExperimentSupervisor:
    """Applies each running experiment's lifecycle rules; event loop only."""

    def __init__(
        self,
        service: ExperimentService,
        *,
        windows: SlidingWindows | None,
        hand_over: HandOver | None = None,
        interval_s: float = 1.0,
        health: Stage | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.service = service
        self.windows = windows
        self.hand_over = hand_over
        self.interval_s = interval_s
        self.health = health if health is not None else health_stage()
        self.clock = clock

    async def run(self) -> None:
        """Check every `interval_s` until cancelled (a lifespan task)."""
        while True:
            await anyio.sleep(self.interval_s)
            try:
                await self.check()
            except Exception:  # one bad check must not end supervision
                log.exception("experiment supervision failed")

    async def check(self) -> None:
        """One pass over every running experiment."""
        for model, experiment in list(self.service.experiments.items()):
            if not experiment.running:
                continue
            spec = experiment.spec
            if experiment.bandit is not None and self.windows is not None:
                await self._check_health(model)
            elapsed = self.clock() - experiment.started_at
            if spec.max_duration_s is not None and elapsed >= spec.max_duration_s:
                await self.service.stop(model)
                await self.service.record_event(
                    model, "max_duration_reached", max_duration_s=spec.max_duration_s, elapsed_s=elapsed
                )
                continue
            if not spec.auto_stop:
                continue
            report = experiment.report()
            if report.verdict not in CONCLUSIVE:
                continue
            await self.service.stop(model)
            await self.service.record_event(model, "concluded", **_evidence(report))
            if spec.on_win == "rollout" and report.winner not in (None, spec.control):
                await self._hand_over(model, str(report.winner), spec.hand_over_plan())

    async def _hand_over(self, model: str, winner: str, plan: RolloutPlan) -> None:
        described = {"plan": plan.name, "stages": [f"{s.name} ({s.weight}%)" for s in plan.stages]}
        if self.hand_over is None:
            await self.service.record_event(
                model, "hand_over_failed", version=winner, reason="this server has no rollout controller",
                **described,
            )  # fmt: skip
            return
        try:
            started = await self.hand_over(model, winner, plan)
        except Exception as exc:  # e.g. a rollout already runs: recorded, never raised into the loop
            await self.service.record_event(
                model, "hand_over_failed", version=winner, reason=str(exc), **described
            )
            return
        await self.service.record_event(model, "handed_over", version=winner, rollout=started, **described)

    async def _check_health(self, model: str) -> None:
        experiment = self.service.experiments[model]
        bandit = experiment.bandit
        assert bandit is not None and self.windows is not None
        control = experiment.spec.control
        baseline = Sample.from_windows(self.windows, model, control, "primary", HEALTH_WINDOW_S)
        for arm in bandit.arms:
            if arm in bandit.removed:
                continue
            window = Sample.from_windows(self.windows, model, arm, "primary", HEALTH_WINDOW_S)
            results = evaluate_gates(self.health, window, None if arm == control else baseline)
            failed = [r for r in results if r.verdict == FAIL and not r.dry_run]
            if not failed:
                continue
            reason = "; ".join(f"{r.gate}: {r.detail}" for r in failed)
            if bandit.remove(arm, reason):
                self.service.mark_dirty(model)
                await self.service.record_event(
                    model,
                    "arm_removed",
                    arm=arm,
                    reason=reason,
                    gates=[r.to_dict() for r in failed],
                    weights=bandit.weights(),
                )


def _evidence(report: Any) -> dict[str, Any]:
    """The numbers behind a verdict: per comparison the estimate, interval, p-values and samples."""
    return {
        "verdict": report.verdict,
        "winner": report.winner,
        "alpha": report.alpha,
        "comparisons": [
            {
                "arm": c.arm,
                "control": c.control,
                "n_control": c.n_control,
                "n_arm": c.n_arm,
                "estimate": c.lift.absolute,
                "confidence_sequence": [c.confidence_sequence.low, c.confidence_sequence.high],
                "always_valid_p_adjusted": c.always_valid_p_adjusted,
                "verdict": c.verdict,
            }
            for c in report.comparisons
        ],
    }
