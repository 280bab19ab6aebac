"""The rollout controller: runs plans stage by stage, gates each stage, rolls back or promotes.

One rollout per model at a time. Each evaluation reads the candidate's sample (role `shadow` in a
shadow stage, `primary` otherwise) and the baseline's (the live version's primary series) from
`SlidingWindows` over everything since the stage began (capped at `plan.window_s`), so successive
looks see growing data as the gates' confidence sequences assume; see `rollout.sample.stage_samples`
for what the latencies measure. It evaluates the stage's gates (`rollout.gates`), then:

- a non-dry-run gate failed more than its `failure_limit` times in this stage -> roll back at once
  (candidate weight 0, shadow off; the live version is never touched, the candidate stays loaded);
  this happens while paused too;
- otherwise, when running, the stage's minimum duration has passed, the candidate has the stage's
  minimum samples and every non-dry-run gate passed `consecutive_successes` times in a row -> next
  stage, or promote after the last one;
- anything else (inconclusive: not enough data, or a regression not yet beyond doubt) -> hold. No
  data never advances a stage. A running stage still undecided after `stage.pause_after_s` pauses,
  with the undecided gates and their numbers as the reason.

The baseline is the live version's window when it has the stage's minimum samples; otherwise the last
such window is used ("frozen" in the evidence), so a 100 % stage, where the live version gets no
traffic, still compares against the baseline measured just before. A 100 % stage always uses the
frozen baseline (what the live window still holds there was served before the stage began), and its
latency is then not compared across time (see `rollout.gates.evaluate_gates`).

A plan's `request_timeout_s` is set through the target before the first stage's traffic (and again
whenever a stage is applied: a resume, a restore) and cleared when the rollout is promoted, rolled
back or aborted, before that final state is saved (see `rollout.plan`).

The controller changes serving only through `RolloutTarget`. Every change is an event (see
`modelserve.rollout.events`), logged, appended to `rollout-events.<model>` in the state store, passed
to `on_event` and queued for webhooks; the rollout's state is written to `rollout.<model>` after
every change. `restore()` picks rollouts up after a restart: see its docstring.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

import anyio

from modelserve.errors import ConfigError, Conflict, NotFound, NotReady
from modelserve.rollout.events import (
    ACTIVE_STATES,
    PAUSED,
    RUNNING,
    RolloutEvent,
    RolloutStatus,
    events_from_log,
)
from modelserve.rollout.gates import FAIL, PASS, GateResult, evaluate_gates
from modelserve.rollout.plan import RolloutPlan, default_plan
from modelserve.rollout.sample import WindowReader, stage_samples
from modelserve.rollout.state import Rollout, rollout_from_state
from modelserve.rollout.target import AgreementSource, ExperimentSource, OutcomeSource, RolloutTarget
from modelserve.rollout.webhooks import WebhookNotifier
from modelserve.state.store import StateStore

logger = logging.getLogger("modelserve.rollout")


#: Where gate data comes from: this process's `SlidingWindows`, or every replica's (fleet).
WindowSource = WindowReader


class RolloutController:
    """Runs rollout plans for many models; see the module docstring."""

    def __init__(
        self,
        *,
        target: RolloutTarget,
        windows: WindowSource,
        store: StateStore,
        agreement: AgreementSource | None = None,
        experiment: ExperimentSource | None = None,
        outcomes: OutcomeSource | None = None,
        webhooks: WebhookNotifier | None = None,
        on_event: Callable[[RolloutEvent], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        max_events: int = 1000,
        gate_event_every_s: float = 60.0,
    ) -> None:
        self.target = target
        self.windows = windows
        self.store = store
        self.webhooks = webhooks
        self._agreement = agreement
        self._experiment = experiment
        self._outcomes = outcomes
        self._on_event = on_event
        self._clock = clock
        self._wall_clock = wall_clock
        self._max_events = max_events
        self._gate_event_every_s = gate_event_every_s
        self._rollouts: dict[str, Rollout] = {}  # latest rollout per model, active or finished
        #: model -> why its saved rollout was not restored (one broken file never stops the others).
        self.restore_errors: dict[str, str] = {}
        self._events: dict[str, deque[RolloutEvent]] = {}
        self._captured: list[RolloutEvent] | None = None  # events of the evaluation in progress
        self._lock = anyio.Lock()  # one action at a time: evaluations and operator commands interleave

    # -- queries -----------------------------------------------------------------------------------

    def status(self, model: str) -> RolloutStatus | None:
        """The model's current or most recent rollout, or None if it never had one."""
        rollout = self._rollouts.get(model)
        return rollout.status(self._clock()) if rollout is not None else None

    def events(self, model: str) -> list[RolloutEvent]:
        """The model's recent events, oldest first (bounded by `max_events`)."""
        return list(self._events.get(model, ()))

    def active_models(self) -> list[str]:
        """Models with a running or paused rollout."""
        return sorted(m for m, r in self._rollouts.items() if r.state in ACTIVE_STATES)

    # -- operator commands -------------------------------------------------------------------------

    async def start(self, model: str, candidate: str, plan: RolloutPlan | None = None) -> RolloutStatus:
        """Start rolling `candidate` out; Conflict if the model already has an active rollout."""
        plan = plan or default_plan()
        if self._experiment is None and any(g.metric == "experiment" for s in plan.stages for g in s.gates):
            raise Conflict(
                f"plan {plan.name!r} has an experiment gate but no experiment results are connected; "
                "remove the gate"
            )
        if self._outcomes is None and any(g.metric == "accuracy" for s in plan.stages for g in s.gates):
            raise Conflict(
                f"plan {plan.name!r} has an accuracy gate but this server collects no labels "
                "(monitoring is off); remove the gate"
            )
        async with self._lock:
            current = self._rollouts.get(model)
            if current is not None and current.state in ACTIVE_STATES:
                raise Conflict(
                    f"model {model!r} already has a rollout to version {current.candidate!r} "
                    f"({current.state}, stage {current.stage.name!r}); abort it or wait for it to finish"
                )
            live = await self.target.live_version(model)
            if live is None:
                raise NotFound(f"model {model!r} has no live version")
            if live == candidate:
                raise Conflict(f"version {candidate!r} of {model!r} is already live")
            if not await self.target.is_ready(model, candidate):
                raise NotReady(f"version {candidate!r} of {model!r} is not ready; stage it first")
            now, wall = self._clock(), self._wall_clock()
            rollout = Rollout(
                model=model,
                candidate=candidate,
                baseline_version=live,
                plan=plan,
                started_at=wall,
                stage_started=now,
                stage_started_at=wall,
                next_due=now + plan.interval_s,
            )
            try:
                await self._apply_stage(rollout, previous_shadow=False)
            except Exception:
                try:  # best effort: leave no half-applied stage behind
                    await self._withdraw(rollout)
                except Exception:
                    logger.exception(
                        "rollout of %s: cannot withdraw %s after a failed start", model, candidate
                    )
                raise
            self._rollouts[model] = rollout
            self._emit(rollout, "started", f"rollout of {candidate} against live {live}, plan {plan.name!r}")
            return rollout.status(now)

    async def pause(self, model: str, reason: str = "paused by operator") -> RolloutStatus:
        """Stop advancing; gates keep being evaluated and a failure still rolls back."""
        async with self._lock:
            rollout = self._active(model)
            if rollout.state != PAUSED:
                rollout.state, rollout.reason = PAUSED, reason
                self._emit(rollout, "paused", reason)
            return rollout.status(self._clock())

    async def resume(self, model: str) -> RolloutStatus:
        """Resume a paused rollout; Conflict if the live version changed or the candidate is not ready."""
        async with self._lock:
            rollout = self._active(model)
            if rollout.state == PAUSED:
                problem = await self._unsafe_reason(rollout)
                if problem:
                    raise Conflict(f"cannot resume the rollout of {model!r}: {problem}; abort it instead")
                await self._apply_stage(rollout, previous_shadow=rollout.stage.shadow)
                rollout.state, rollout.reason = RUNNING, ""
                self._emit(rollout, "resumed", "resumed by operator")
            return rollout.status(self._clock())

    async def abort(self, model: str, reason: str = "aborted by operator") -> RolloutStatus:
        """Stop the rollout: the candidate gets no traffic and no shadow; the live version is untouched."""
        async with self._lock:
            rollout = self._active(model)
            await self._withdraw(rollout)
            rollout.state, rollout.reason = "aborted", reason
            self._emit(rollout, "aborted", reason)
            return rollout.status(self._clock())

    async def promote(self, model: str, *, all_stages: bool = False) -> RolloutStatus:
        """Skip the current stage (or, with `all_stages`, every remaining stage) without its gates."""
        async with self._lock:
            rollout = self._active(model)
            stages = rollout.plan.stages[rollout.stage_index :] if all_stages else [rollout.stage]
            names = [stage.name for stage in stages]
            rollout.skipped.extend(names)
            self._emit(rollout, "skipped", f"operator skipped {', '.join(names)}", data={"skipped": names})
            if all_stages:
                rollout.stage_index = len(rollout.plan.stages) - 1
            await self._advance(rollout, self._clock(), ())
            return rollout.status(self._clock())

    # -- evaluation --------------------------------------------------------------------------------

    async def evaluate_once(self, now: float | None = None) -> list[RolloutEvent]:
        """Evaluate every active rollout once (at `now`, default the clock); returns the new events."""
        now = self._clock() if now is None else now
        emitted: list[RolloutEvent] = []
        for model in self.active_models():
            emitted.extend(await self._evaluate_model(model, now))
        return emitted

    async def run(self) -> None:
        """Evaluate each active rollout every `plan.interval_s` until cancelled (an app lifespan task)."""
        while True:
            now = self._clock()
            next_wake = now + 1.0
            for model in self.active_models():
                rollout = self._rollouts[model]
                if now >= rollout.next_due:
                    rollout.next_due = now + rollout.plan.interval_s
                    await self._evaluate_model(model, now)
                next_wake = min(next_wake, rollout.next_due)
            await anyio.sleep(max(0.0, next_wake - self._clock()))

    async def _evaluate_model(self, model: str, now: float) -> list[RolloutEvent]:
        async with self._lock:
            rollout = self._rollouts.get(model)
            if rollout is None or rollout.state not in ACTIVE_STATES:
                return []
            captured: list[RolloutEvent] = []
            self._captured = captured
            try:
                await self._evaluate(rollout, now)
            except Exception as exc:  # the serving layer refused; keep the loop alive and retry later
                logger.exception("rollout of %s: evaluation failed", model)
                self._emit(rollout, "error", f"{type(exc).__name__}: {exc}")
            finally:
                self._captured = None
            self._persist(rollout)
            return captured

    async def _evaluate(self, rollout: Rollout, now: float) -> None:
        stage, plan, model = rollout.stage, rollout.plan, rollout.model
        elapsed = now - rollout.stage_started
        window = min(plan.window_s, max(elapsed, plan.interval_s))
        candidate, baseline, measure = stage_samples(
            self.windows, model, rollout.candidate, rollout.baseline_version, shadow=stage.shadow,
            window_s=window, now=now,
        )  # fmt: skip
        baseline_source = "live"
        # At 100 % the live version serves nothing new: what its window still holds was served
        # before the stage began (under another load), so it is never taken as concurrent.
        everything = stage.weight >= 100 and not stage.shadow
        if baseline.requests >= stage.min_samples and not everything:
            if not stage.shadow:  # what a canary stage without live traffic compares against
                rollout.frozen_baseline = baseline
        elif rollout.frozen_baseline is not None and not stage.shadow:
            baseline, baseline_source = rollout.frozen_baseline, "frozen"
        metrics = {g.metric for g in stage.gates}
        agreement = (
            self._agreement(model, rollout.candidate)
            if self._agreement and "shadow_agreement" in metrics
            else None
        )
        experiment = (
            self._experiment(model, rollout.candidate)
            if self._experiment and "experiment" in metrics
            else None
        )
        outcomes = (
            self._outcomes(
                model, rollout.candidate, rollout.baseline_version, rollout.started_at, stage.shadow
            )
            if self._outcomes and "accuracy" in metrics
            else None
        )
        results = evaluate_gates(
            stage, candidate, baseline, agreement=agreement, experiment=experiment,
            concurrent=baseline_source == "live" and not everything, outcomes=outcomes,
        )  # fmt: skip
        rollout.record_results(results)
        data = {
            "candidate_requests": candidate.requests,
            "baseline_requests": baseline.requests,
            "baseline_source": baseline_source,
            "latency_measure": measure,
            "window_s": round(window, 3),
            "stage_elapsed_s": round(elapsed, 3),
        }

        breaking = [
            r
            for r, g in zip(results, stage.gates, strict=True)
            if r.verdict == FAIL and not g.dry_run and rollout.failures[g.name] > g.failure_limit
        ]
        if breaking:
            await self._withdraw(rollout)
            rollout.state = "rolled_back"
            rollout.reason = "; ".join(f"{r.gate}: {r.detail}" for r in breaking)
            self._emit(rollout, "rolled_back", f"rolled back: {rollout.reason}", results, data)
            return

        verdicts = tuple(r.verdict for r in results)
        changed = verdicts != rollout.last_verdicts
        dry_failures = [r.gate for r in results if r.verdict == FAIL and r.dry_run]
        if dry_failures and changed:
            names = ", ".join(dry_failures)
            self._emit(rollout, "dry_run_failure", f"dry-run gate(s) failed, not acted on: {names}", results)
        if rollout.state == RUNNING and rollout.stage_complete(now, candidate.requests):
            await self._advance(rollout, now, results, data)  # its event carries these results
        elif rollout.state == RUNNING and elapsed > stage.pause_after_s:
            undecided = [
                r for r, g in zip(results, stage.gates, strict=True) if r.verdict != PASS and not g.dry_run
            ]
            why = "; ".join(f"{r.gate}: {r.detail}" for r in undecided) or (
                f"candidate has {candidate.requests} of {stage.min_samples} samples"
            )
            rollout.state = PAUSED
            rollout.reason = f"stage {stage.name!r} undecided after {elapsed:.0f} s: {why}"
            self._emit(rollout, "paused", rollout.reason, results, data)
        elif changed or now - rollout.last_gate_event >= self._gate_event_every_s:
            self._emit(rollout, "gates", " ".join(f"{r.gate}={r.verdict}" for r in results), results, data)
            rollout.last_verdicts, rollout.last_gate_event = verdicts, now

    async def _advance(
        self,
        rollout: Rollout,
        now: float,
        results: tuple[GateResult, ...],
        data: dict[str, Any] | None = None,
    ) -> None:
        passed = rollout.stage
        if rollout.stage_index + 1 >= len(rollout.plan.stages):
            # Shadow off unconditionally: a skip to the end may leave a shadow stage behind.
            await self.target.set_shadow(rollout.model, rollout.candidate, False)
            await self.target.promote(rollout.model, rollout.candidate)
            await self._clear_deadline(rollout)
            rollout.state, rollout.reason = "promoted", _promotion_reason(rollout)
            self._emit(rollout, "promoted", f"{rollout.candidate} is live", results, data)
            return
        rollout.enter_stage(rollout.stage_index + 1, now, self._wall_clock())
        await self._apply_stage(rollout, previous_shadow=passed.shadow)
        stage = rollout.stage
        mode = "shadow" if stage.shadow and not stage.weight else f"{stage.weight}% traffic"
        self._emit(rollout, "advanced", f"{passed.name} passed -> {stage.name} ({mode})", results, data)

    async def _apply_stage(self, rollout: Rollout, *, previous_shadow: bool) -> None:
        stage = rollout.stage
        if rollout.plan.request_timeout_s is not None:  # before any traffic: both versions under it
            await self.target.set_deadline(rollout.model, rollout.plan.request_timeout_s)
        await self.target.set_traffic(rollout.model, rollout.candidate, stage.weight)
        if stage.shadow or previous_shadow:
            await self.target.set_shadow(rollout.model, rollout.candidate, stage.shadow)

    async def _withdraw(self, rollout: Rollout) -> None:
        # Traffic first: it is what users see. The candidate stays loaded for a retry.
        await self.target.set_traffic(rollout.model, rollout.candidate, 0)
        await self.target.set_shadow(rollout.model, rollout.candidate, False)
        await self._clear_deadline(rollout)

    async def _clear_deadline(self, rollout: Rollout) -> None:
        # Before the final state is saved: a failure here leaves the rollout active, and the next
        # look (or a restore after a restart or a leader change) ends it, and clears it, again.
        if rollout.plan.request_timeout_s is not None:
            await self.target.set_deadline(rollout.model, None)

    # -- durability --------------------------------------------------------------------------------

    async def restore(self, models: Iterable[str], *, keep_clock: bool = False) -> list[RolloutStatus]:
        """Pick up the saved rollouts of `models` after a restart.

        A rollout resumes at its saved stage (and keeps a saved pause), with the stage's clock and
        pass streaks reset: the stage's full minimum duration is observed again, because the metrics
        windows restarted empty. Failure counts are kept. When it cannot safely resume (the live
        version differs from the one it started against, or the candidate is not ready) it is
        paused with the reason; a non-ready candidate also gets no traffic or shadow.

        `keep_clock`: a leader taking over from another replica keeps the stage's clock (see
        `rollout_from_state`). A model without an active rollout gets its config deadline back (a plan's
        `request_timeout_s` left behind by a crash is cleared).
        """
        restored = []
        for model in models:
            async with self._lock:
                rollout = self._load(model, keep_clock=keep_clock)
                if rollout is None or rollout.state not in ACTIVE_STATES:
                    await self._clear_orphan_deadline(model)
                    continue
                now = self._clock()
                problem = await self._unsafe_reason(rollout)
                if problem:
                    if not await self.target.is_ready(model, rollout.candidate):
                        await self._withdraw(rollout)
                    rollout.state, rollout.reason = PAUSED, f"cannot safely resume after restart: {problem}"
                    self._emit(rollout, "paused", rollout.reason)
                else:
                    await self._apply_stage(rollout, previous_shadow=rollout.stage.shadow)
                    clock = (
                        "stage clock kept"
                        if keep_clock
                        else "stage clock restarted, its minimum duration is observed again"
                    )
                    self._emit(
                        rollout,
                        "restored",
                        f"restored at stage {rollout.stage.name!r} ({rollout.state}); {clock}",
                    )
                restored.append(rollout.status(now))
        return restored

    async def _clear_orphan_deadline(self, model: str) -> None:
        # A plan's deadline no active rollout owns: its end was not applied before a crash, or its
        # start was lost before its state was saved (a no-op when the model has none).
        try:
            await self.target.set_deadline(model, None)
        except Exception:  # the next restore (restart, leader term) tries again
            logger.exception("model %s: cannot clear a request deadline no rollout owns", model)

    def _load(self, model: str, *, keep_clock: bool) -> Rollout | None:
        """The saved rollout of `model` (and its events) into memory, nothing applied."""
        try:
            saved = self.store.read(f"rollout.{model}")
            if saved is None:
                return None
            rollout = rollout_from_state(saved, self._clock(), self._wall_clock(), keep_clock=keep_clock)
        except ConfigError as exc:  # unreadable or corrupt: this model's rollout only
            self.restore_errors[model] = f"saved rollout not restored: {exc}"
            logger.error("rollout of %s: %s", model, self.restore_errors[model])
            return None
        rollout.last_saved = saved
        self._rollouts[model] = rollout
        saved_events = self.store.read_log(f"rollout-events.{model}")[-self._max_events :]
        self._events[model] = deque(events_from_log(saved_events), maxlen=self._max_events)
        return rollout

    async def adopt(self, model: str) -> Rollout | None:
        """Load the saved rollout of `model` as it is, to act on it or show it (another replica leads)."""
        async with self._lock:
            return self._load(model, keep_clock=True)

    def forget(self, model: str | None = None) -> None:
        """Drop the in-memory rollout of `model` (None: of every model), e.g. when stepping down."""
        if model is None:
            self._rollouts.clear()
            self._events.clear()
        else:
            self._rollouts.pop(model, None)
            self._events.pop(model, None)

    def saved_seq(self, model: str) -> int:
        """The event count of the in-memory rollout of `model` (-1 without one)."""
        rollout = self._rollouts.get(model)
        return -1 if rollout is None else rollout.event_seq

    async def _unsafe_reason(self, rollout: Rollout) -> str:
        live = await self.target.live_version(rollout.model)
        if live != rollout.baseline_version:
            return f"live version is {live!r}, the rollout started against {rollout.baseline_version!r}"
        if not await self.target.is_ready(rollout.model, rollout.candidate):
            return f"candidate {rollout.candidate!r} is not ready"
        return ""

    def _persist(self, rollout: Rollout) -> None:
        state = rollout.to_state()
        if state == rollout.last_saved:
            return
        try:
            self.store.write(f"rollout.{rollout.model}", state)
        except Exception:  # retried on the next change; serving decisions never wait for the disk
            logger.exception("rollout of %s: cannot write its state", rollout.model)
            return
        rollout.last_saved = state

    def _active(self, model: str) -> Rollout:
        rollout = self._rollouts.get(model)
        if rollout is None or rollout.state not in ACTIVE_STATES:
            raise NotFound(f"model {model!r} has no active rollout")
        return rollout

    def _emit(
        self,
        rollout: Rollout,
        kind: str,
        message: str,
        gates: tuple[GateResult, ...] = (),
        data: dict[str, Any] | None = None,
    ) -> RolloutEvent:
        stage = rollout.stage
        event = RolloutEvent(
            time=self._wall_clock(),
            model=rollout.model,
            candidate=rollout.candidate,
            kind=kind,
            stage=stage.name,
            stage_index=rollout.stage_index,
            weight=0 if rollout.state not in ACTIVE_STATES and kind != "promoted" else stage.weight,
            message=message,
            gates=tuple(gates),
            data=dict(data or {}),
            event_id=rollout.next_event_id(kind),
        )
        self._events.setdefault(rollout.model, deque(maxlen=self._max_events)).append(event)
        if self._captured is not None:
            self._captured.append(event)
        payload = event.to_dict()
        level = logging.WARNING if kind in ("rolled_back", "error", "dry_run_failure") else logging.INFO
        logger.log(level, "rollout of %s to %s: %s: %s", rollout.model, rollout.candidate, kind, message)
        try:
            self.store.append(f"rollout-events.{rollout.model}", payload)
        except Exception:  # durability of the log must not stop a rollback
            logger.exception("rollout of %s: cannot append the event to the state store", rollout.model)
        self._persist(rollout)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("rollout of %s: on_event callback failed", rollout.model)
        if self.webhooks is not None:
            self.webhooks.notify(payload)
        return event


def _promotion_reason(rollout: Rollout) -> str:
    count = len(rollout.plan.stages)
    skipped = list(dict.fromkeys(rollout.skipped))
    if not skipped:
        return f"all {count} stages passed"
    passed = count - len(skipped)
    return f"{passed} of {count} stages passed their gates; skipped by an operator: {', '.join(skipped)}"
