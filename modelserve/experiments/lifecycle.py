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
- **re-entry**: a removed arm returns after the bandit's `cooldown_s` (doubled after each further
  removal, at most a day unless the cool-down itself is longer) **on probation** (`arm_returned`):
  exactly the floor weight, and the health gates judge it on its requests since it returned only.
  Failing again removes it again (`arm_removed`, with the count and the next cool-down); passing
  every gate with enough requests ends the probation (`arm_reinstated`) and its rewards weigh again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

from modelserve.experiments.report import A_BETTER, B_BETTER, EQUIVALENT
from modelserve.rollout.gates import FAIL, PASS, evaluate_gates
from modelserve.rollout.plan import RolloutPlan, Stage, default_gates
from modelserve.rollout.sample import Sample, WindowReader

if TYPE_CHECKING:
    from modelserve.experiments.service import ExperimentService

log = logging.getLogger("modelserve.experiments")

#: `(model, winning version, plan) -> a description of what was started` (the rollout controller's).
HandOver = Callable[[str, str, RolloutPlan], Awaitable[str]]
CONCLUSIVE = (B_BETTER, A_BETTER, EQUIVALENT)
HEALTH_WINDOW_S = 300.0
HEALTH_MIN_REQUESTS = 100
#: The longest cool-down the doubling reaches (unless the configured one is longer).
MAX_COOLDOWN_S = 86_400.0


def cooldown_s(base_s: float, removals: int) -> float:
    """How long an arm removed `removals` times stays out: `base_s`, doubled for each earlier removal."""
    return min(base_s * 2.0 ** max(removals - 1, 0), max(base_s, MAX_COOLDOWN_S))


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
        windows: WindowReader | None,
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
        base_cooldown = experiment.spec.bandit.cooldown_s
        now = self.clock()
        baseline = Sample.from_windows(self.windows, model, control, "primary", HEALTH_WINDOW_S)
        for arm in bandit.arms:
            if arm in bandit.removed:
                out_s = now - bandit.removed_at.setdefault(arm, now)  # saved without a time: from now
                due = out_s >= cooldown_s(base_cooldown, bandit.removals.get(arm, 1))
                if due and bandit.readmit(arm, at=now):
                    self.service.mark_dirty(model)
                    await self.service.record_event(
                        model, "arm_returned", arm=arm, after_s=out_s, removals=bandit.removals.get(arm, 1),
                        weights=bandit.weights(),
                    )  # fmt: skip
                continue
            # On probation only what it served since it came back counts (its window's old failures
            # are why it left).
            returned = bandit.probation.get(arm)
            window_s = HEALTH_WINDOW_S if returned is None else min(HEALTH_WINDOW_S, now - returned)
            if window_s <= 0:  # came back this instant: nothing to judge yet
                continue
            window = Sample.from_windows(self.windows, model, arm, "primary", window_s)
            results = evaluate_gates(self.health, window, None if arm == control else baseline)
            failed = [r for r in results if r.verdict == FAIL and not r.dry_run]
            if not failed:
                if returned is not None and all(r.verdict == PASS for r in results if not r.dry_run):
                    bandit.end_probation(arm)
                    self.service.mark_dirty(model)
                    await self.service.record_event(
                        model, "arm_reinstated", arm=arm, requests=window.requests,
                        probation_s=now - returned, weights=bandit.weights(),
                    )  # fmt: skip
                continue
            reason = "; ".join(f"{r.gate}: {r.detail}" for r in failed)
            if bandit.remove(arm, reason, at=now):
                self.service.mark_dirty(model)
                removals = bandit.removals[arm]
                await self.service.record_event(
                    model,
                    "arm_removed",
                    arm=arm,
                    reason=reason,
                    gates=[r.to_dict() for r in failed],
                    weights=bandit.weights(),
                    removals=removals,
                    on_probation=returned is not None,
                    returns_after_s=cooldown_s(base_cooldown, removals),
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
