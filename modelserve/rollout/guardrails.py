"""Guardrails: the rollout gates, watching traffic that no rollout governs.

Every `interval_s` (per model, `[guardrails]` in config.toml) the guardrails look at each model
without an active rollout (a rollout's own gates govern it then) and evaluate the same gates as a
rollout's stage (`evaluate_gates`: the default error, timeout and p95 gates, `min_samples` per version):

- a manual canary (`canary MODEL N`): its requests since the weight was set, against the live
  version's over the same period; on failure the canary weight goes to 0;
- an A/B experiment's treatment arms: their requests since the experiment started (up to the
  window), against the control arm's; on failure the experiment stops;
- a promotion, for `watch_s` after it: the new live version's requests since the switch, against
  the previous version's before the switch (it is kept warm); on failure the previous version is
  live again. The promotion's time is in the shared desired state, so a new leader (or a restarted
  server) inside the window watches the rest of it; the baseline is then what the previous
  version's windows still hold.

A failure is a non-dry-run gate verdict `fail`: the candidate worse than the baseline beyond doubt at
the gate's confidence. Too little data is `inconclusive`, and nothing happens. The version acted
against is withdrawn (`rollout.withdrawn`: promoting it by hand then needs force), and the action goes
to `on_action` with the evidence of every gate (estimate, interval, samples, threshold): the server
logs it in the audit log, counts it, sends it to the webhooks and keeps it in the model's status.

After a promotion the latency gates compare versions measured at different times, so, as in a
rollout's last stage, they report their numbers without acting; rate gates (errors, timeouts) act.
Bandit arms are watched by the experiment supervisor's own health gates, not here.

In a fleet the guardrails run on the rollout leader only, read every replica's windows and act
through the fleet's commands, so each action applies on every replica.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from modelserve.config import GuardrailConfig
from modelserve.rollout.gates import FAIL, GateResult, evaluate_gates
from modelserve.rollout.plan import Stage, default_gates
from modelserve.rollout.sample import Sample, WindowReader
from modelserve.rollout.withdrawn import WithdrawnVersions
from modelserve.serving.registry import ModelRegistry
from modelserve.state.policies import PolicyTable

log = logging.getLogger("modelserve.guardrails")

GUARDRAIL = "guardrail"
#: The longest period a look reads (everything since the watch began, up to this).
WINDOW_S = 600.0
CANARY, EXPERIMENT, WATCH = "canary", "experiment", "promotion_watch"


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardrailAction:
    """What a guardrail did, and the evidence: every gate's verdict with its numbers."""

    time: float
    model: str
    watched: str  # canary | experiment | promotion_watch
    action: str  # canary_weight_zero | experiment_stopped | rolled_back
    version: str
    baseline_version: str
    message: str
    gates: tuple[GateResult, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "model": self.model,
            "watched": self.watched,
            "action": self.action,
            "version": self.version,
            "baseline_version": self.baseline_version,
            "message": self.message,
            "gates": [gate.to_dict() for gate in self.gates],
            "data": self.data,
        }


class GuardrailCommands(Protocol):
    """How a guardrail changes serving everywhere (`fleet.commands.FleetCommands`)."""

    async def update_policy(self, model: str, changes: dict[str, Any]) -> object: ...
    async def rollback(self, model: str) -> object: ...


@dataclass(frozen=True, slots=True)
class Promotion:
    """The promotion that made `live` live (from the shared desired state, so it outlives a leader)."""

    previous: str
    live: str
    at: float  # wall clock


class ExperimentArms(Protocol):
    """The running A/B experiments (`experiments.service.ExperimentService`, adapted)."""

    def running_ab(self, model: str) -> tuple[str, tuple[str, ...], float] | None:
        """`(control, treatment arms, started_at wall-clock)` of the model's running A/B test, or None."""
        ...

    async def stop(self, model: str, reason: str, evidence: list[dict[str, Any]]) -> None: ...


@dataclass(slots=True)
class _Watch:
    """One thing being watched: since when (monotonic), against what."""

    watched: str
    version: str
    baseline_version: str
    since: float
    baseline: Sample | None = None  # frozen at the switch (promotion watch)
    until: float = float("inf")
    last: tuple[GateResult, ...] = ()


class Guardrails:
    """Watches manual canaries, A/B arms and fresh promotions (see the module docstring)."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        policies: PolicyTable,
        windows: Callable[[], WindowReader],
        commands: GuardrailCommands,
        withdrawn: WithdrawnVersions,
        rollout_active: Callable[[str], bool],
        last_promotion: Callable[[str], Promotion | None],
        experiments: ExperimentArms | None = None,
        on_action: Callable[[GuardrailAction], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.windows = windows
        self.commands = commands
        self.withdrawn = withdrawn
        self.rollout_active = rollout_active
        self.last_promotion = last_promotion
        self.experiments = experiments
        self.on_action = on_action
        self._clock = clock
        self._wall_clock = wall_clock
        self._watches: dict[tuple[str, str], _Watch] = {}  # (model, watched) -> watch
        self._live: dict[str, str] = {}  # model -> the live version last seen
        self._next_due: dict[str, float] = {}
        self.actions: dict[str, GuardrailAction] = {}  # model -> the last action

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Look at every model when its interval is due, until cancelled (a lifespan / leader task)."""
        self._live.clear()  # a new term: promotions seen from now on start a watch
        self._watches.clear()
        while True:
            now = self._clock()
            wake = now + 1.0
            for model, slots in list(self.registry.models.items()):
                config = slots.config.guardrails
                if not config.enabled:
                    continue
                due = self._next_due.get(model, now)
                if now >= due:
                    self._next_due[model] = due = now + config.interval_s
                    try:
                        await self.check(model, now)
                    except Exception:  # one model's failure never stops the others
                        log.exception("guardrails of %s: check failed", model)
                wake = min(wake, due)
            await anyio.sleep(max(0.0, wake - self._clock()))

    async def check(self, model: str, now: float | None = None) -> list[GuardrailAction]:
        """One look at `model`: update what is watched, evaluate it, act on failures."""
        now = self._clock() if now is None else now
        slots = self.registry.models.get(model)
        if slots is None or slots.live is None:
            return []
        config = slots.config.guardrails
        live = slots.live.version
        self._follow_promotions(model, live, config, now)
        if self.rollout_active(model):  # the rollout's own gates govern its candidate
            self._watches.pop((model, CANARY), None)
            self._watches.pop((model, EXPERIMENT), None)
            return []
        self._follow_canary(model, live, config, now)
        self._follow_experiment(model, config, now)
        acted = []
        for key in [k for k in self._watches if k[0] == model]:
            watch = self._watches[key]
            if now > watch.until:
                del self._watches[key]
                continue
            action = await self._evaluate(model, watch, config, now)
            if action is not None:
                acted.append(action)
        return acted

    def status(self, model: str) -> dict[str, Any]:
        """What is watched now (with the last verdicts) and the last action, for the model's status."""
        now = self._clock()
        watching = [
            {
                "watched": w.watched,
                "version": w.version,
                "baseline_version": w.baseline_version,
                "for_s": round(now - w.since, 3),
                "left_s": None if w.until == float("inf") else round(max(0.0, w.until - now), 3),
                "verdicts": {g.gate: g.verdict for g in w.last},
            }
            for (m, _), w in self._watches.items()
            if m == model
        ]
        last = self.actions.get(model)
        return {"guardrails": {"watching": watching, "last_action": last.to_dict() if last else None}}

    # -- what is watched ---------------------------------------------------------------------------

    def _follow_promotions(self, model: str, live: str, config: GuardrailConfig, now: float) -> None:
        seen = self._live.get(model)
        self._live[model] = live
        if seen == live:
            return
        self._watches.pop((model, WATCH), None)
        promotion = self.last_promotion(model)
        if promotion is None or promotion.live != live or config.watch_s <= 0:
            return
        # Counted from the promotion itself: a leader elected (or a server restarted) inside the
        # window watches the rest of it.
        age = max(0.0, self._wall_clock() - promotion.at)
        if age >= config.watch_s:
            return
        baseline = Sample.from_windows(self.windows(), model, promotion.previous, "primary", WINDOW_S)
        since = now - age
        self._watches[(model, WATCH)] = _Watch(
            WATCH, live, promotion.previous, since=since, baseline=baseline, until=since + config.watch_s
        )

    def _follow_canary(self, model: str, live: str, config: GuardrailConfig, now: float) -> None:
        policy = self.policies.get(model)
        candidate = policy.candidate if policy is not None else None
        exposed = config.canary and policy is not None and candidate not in (None, live)
        if not exposed or policy is None or policy.canary_weight <= 0 or candidate is None:
            self._watches.pop((model, CANARY), None)
            return
        current = self._watches.get((model, CANARY))
        if current is None or current.version != candidate or current.baseline_version != live:
            self._watches[(model, CANARY)] = _Watch(CANARY, candidate, live, since=now)

    def _follow_experiment(self, model: str, config: GuardrailConfig, now: float) -> None:
        found = self.experiments.running_ab(model) if self.experiments and config.experiments else None
        if found is None:
            self._watches.pop((model, EXPERIMENT), None)
            return
        control, arms, started_at = found
        current = self._watches.get((model, EXPERIMENT))
        if current is None or current.baseline_version != control:
            since = now - max(0.0, self._wall_clock() - started_at)
            self._watches[(model, EXPERIMENT)] = _Watch(EXPERIMENT, ",".join(arms), control, since=since)

    # -- evaluation --------------------------------------------------------------------------------

    async def _evaluate(
        self, model: str, watch: _Watch, config: GuardrailConfig, now: float
    ) -> GuardrailAction | None:
        stage = guardrail_stage(config.min_samples)
        window = min(WINDOW_S, max(now - watch.since, config.interval_s))
        windows = self.windows()
        baseline = watch.baseline
        concurrent = baseline is None
        if baseline is None:
            baseline = Sample.from_windows(windows, model, watch.baseline_version, "primary", window)
        failed: list[tuple[str, tuple[GateResult, ...]]] = []
        for version in watch.version.split(","):
            candidate = Sample.from_windows(windows, model, version, "primary", window)
            results = evaluate_gates(stage, candidate, baseline, concurrent=concurrent)
            watch.last = results
            if any(r.verdict == FAIL and not r.dry_run for r in results):
                failed.append((version, results))
        if not failed:
            return None
        version, results = failed[0]
        breaking = [r for r in results if r.verdict == FAIL and not r.dry_run]
        reason = "; ".join(f"{r.gate}: {r.detail}" for r in breaking)
        action = await self._act(model, watch, version, reason, results)
        del self._watches[(model, watch.watched)]
        return action

    async def _act(
        self, model: str, watch: _Watch, version: str, reason: str, results: tuple[GateResult, ...]
    ) -> GuardrailAction:
        evidence = [r.to_dict() for r in results]
        if watch.watched == CANARY:
            await self.commands.update_policy(model, {"canary_weight": 0.0})
            kind, message = "canary_weight_zero", f"canary of {version} set to 0 %: {reason}"
        elif watch.watched == EXPERIMENT:
            assert self.experiments is not None
            await self.experiments.stop(model, reason, evidence)
            kind, message = "experiment_stopped", f"experiment stopped, arm {version} failed: {reason}"
        else:
            await self.commands.rollback(model)
            self._live[model] = watch.baseline_version  # our own switch starts no watch
            kind = "rolled_back"
            message = f"{watch.baseline_version} live again, {version} regressed after promotion: {reason}"
        self.withdrawn.record(model, version, by=GUARDRAIL, reason=message, evidence=evidence)
        action = GuardrailAction(
            time=self._wall_clock(), model=model, watched=watch.watched, action=kind, version=version,
            baseline_version=watch.baseline_version, message=message, gates=results,
            data={"watched_for_s": round(self._clock() - watch.since, 3)},
        )  # fmt: skip
        self.actions[model] = action
        log.warning("guardrail of %s: %s", model, message)
        if self.on_action is not None:
            try:
                self.on_action(action)
            except Exception:
                log.exception("guardrail of %s: on_action failed", model)
        return action


def guardrail_stage(min_samples: int) -> Stage:
    """The gates guardrails evaluate: a rollout's defaults without shadow agreement (no shadow here)."""
    gates = tuple(g for g in default_gates() if g.metric != "shadow_agreement")
    return Stage(name=GUARDRAIL, min_samples=min_samples, min_duration_s=0.0, gates=gates)
