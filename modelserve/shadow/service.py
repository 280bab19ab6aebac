"""`ShadowService`: run candidate versions beside the live one on real traffic, compare, report.

`observe` (an inference observer) sees each finished inference after its response was sent; for a
200 whose route decision names shadow versions it hands each shadow run to the `ShadowRunner` (a
dedicated pool of low-priority threads with an admission bound that drops and counts; never anyio's
pool, never the primary's limiter). A shadow version whose warm-up showed it runs in a few µs can
instead run on the event loop right there (`[shadow] on_loop = true`): every request is then compared,
and the primary pays the shadow's time. Shadows are skipped (counted as dropped, and as `shed_behind`)
while the event loop is behind by the server's own doing (its callbacks, or its threads holding the
GIL), so a saturated server sheds them first; a loop that is late because other processes have the
host's CPUs sheds nothing, since that frees nothing for the primary (`shadow/lag.py`).

Every outcome is recorded per shadow version in the runner's stats, in the sliding windows (role
"shadow": the rollout gates read it), through `TelemetryService.on_shadow_result` (metrics and a span
linked to the request) when telemetry is on, and in the JSONL sink (`shadow/sink.py`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from typing import Any

import modelserve.validation as validation
from modelserve.config import ShadowConfig
from modelserve.errors import ModelServeError, RequestError
from modelserve.inference.path import InferenceRecord
from modelserve.rollout.gates import ShadowAgreement
from modelserve.rollout.sample import stage_samples
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.runtime import LoadedVersion
from modelserve.shadow.lag import LoopLag
from modelserve.shadow.report import recommend, report_stage
from modelserve.shadow.runner import ShadowResult, ShadowRunner
from modelserve.shadow.sink import JsonlSink
from modelserve.state.policies import PolicyTable
from modelserve.telemetry.service import TelemetryService
from modelserve.telemetry.windows import SlidingWindows

#: Shadow pool threads: 2 so one hung shadow cannot stop every other model's shadows.
POOL_WORKERS = 2
#: Global bound on shadow runs queued or running (each model also has its `[shadow] max_in_flight`).
MAX_IN_FLIGHT = 64
#: Requests whose inputs exceed this many bytes are not shadowed (dropped and counted).
MAX_SHADOW_INPUT_BYTES = 8 * 1024 * 1024
#: How much the shadow threads lower their priority (nice); 19 is the lowest priority.
POOL_NICE = 19
#: Shadows are skipped while the event loop runs this late by the server's own doing (shadow/lag.py).
MAX_LOOP_LAG_S = 0.05


class ShadowService:
    """The shadow runner, sink and observer of one server."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        policies: PolicyTable,
        windows: SlidingWindows,
        telemetry: TelemetryService | None,
        sink: JsonlSink | None,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.windows = windows
        self.telemetry = telemetry
        self.sink = sink
        self.loop = LoopLag()
        #: Shadows are shed while the loop lags more than this (inf: never shed, every request compared).
        self.max_loop_lag_s = MAX_LOOP_LAG_S
        #: Shadow runs shed because the server itself was behind (its own loop lag; also `dropped`).
        self.skipped_behind = 0
        self.max_input_bytes = MAX_SHADOW_INPUT_BYTES
        #: Called with every settled shadow run, on the thread that settled it (e.g. the label join).
        self.result_listeners: list[Callable[[ShadowResult], None]] = []
        self.runner = ShadowRunner(
            max_workers=POOL_WORKERS, max_in_flight=MAX_IN_FLIGHT, sink=sink, on_result=self._on_result,
            nice=POOL_NICE,
        )  # fmt: skip

    def observe(self, record: InferenceRecord) -> None:
        """Observer: submit the shadow runs of a successful request (event loop, after the response)."""
        decision = record.decision
        if not decision.shadows or record.status != 200 or record.outputs is None or record.inputs is None:
            return
        slots = self.registry.models.get(record.model)
        if slots is None:
            return
        config: ShadowConfig = slots.config.shadow
        # A queued shadow run keeps the request's tensors alive: beyond a size, shed it (counted as
        # dropped) so a client's huge batches cannot pile up max_in_flight copies in memory.
        oversized = sum(int(getattr(a, "nbytes", 0)) for a in record.inputs.values()) > self.max_input_bytes
        behind = oversized or self.loop.own_s > self.max_loop_lag_s
        telemetry = self.telemetry
        link = (
            telemetry.request_span_context(record)
            if telemetry is not None and telemetry.tracing.enabled
            else None
        )
        for version in decision.shadows:
            if behind:
                self.skipped_behind += not oversized
                self._dropped(record.model, version, decision.version)
                continue
            try:
                loaded = slots.get(version)
            except ModelServeError:  # unloaded or replaced since the decision was made
                self._dropped(record.model, version, decision.version)
                continue
            run = (
                self.runner.run_inline
                if self._inline(loaded, config, record.model, version)
                else self.runner.submit
            )
            admitted = run(
                model=record.model, primary_version=decision.version, shadow_version=version,
                run=partial(loaded.run, record.inputs), inputs=record.inputs,
                primary_outputs=record.outputs,
                primary_latency_s=record.inference_s if record.inference_s is not None else record.latency_s,
                request_id=record.request_id, compare=config.compare, context=link,
                timeout_s=config.timeout_ms / 1e3, max_in_flight=config.max_in_flight,
                targeting_key=decision.targeting_key,
                log_inputs=config.log_inputs_rate > 0 and random.random() < config.log_inputs_rate,
            )  # fmt: skip
            if not admitted:
                self._count_drop(record.model, version, decision.version)

    async def set_shadow(
        self, model: str, versions: tuple[str, ...], rate: float | None = None
    ) -> dict[str, Any]:
        """Shadow `versions` of `model` (each loaded and ready, none live) at `rate`; () turns it off."""
        slots = self.registry.slots(model)
        live = slots.live.version if slots.live is not None else None
        for version in versions:
            if version == live:
                raise RequestError(f"version {version} is the live version of {model!r}; shadow another one")
            if version not in slots.ready_versions:
                raise RequestError(
                    f"version {version} of model {model!r} is not loaded and ready; "
                    f"stage it first (modelserve stage {model} {version})"
                )
        changes: dict[str, Any] = {"shadow_versions": versions}
        if rate is not None:
            changes["shadow_sample_rate"] = validation.number(rate, "rate", low=0.0, high=1.0)
        await self.policies.change(model, **changes)  # on every replica, when state is shared
        self.runner.clear_examples(model, keep=versions)  # a stopped shadow keeps no client data
        return self.status(model)

    def report(self, model: str, **thresholds: Any) -> dict[str, Any]:
        """Every shadow version's stats with its promotion recommendation and the evidence."""
        slots = self.registry.slots(model)
        policy = self.policies.get(model)
        live = slots.live.version if slots.live is not None else None
        configured = policy.shadow_versions if policy is not None else ()
        for version in configured:
            self.runner.stats(model, version)  # a configured version is reported even before its first run
        primary = self.windows.snapshot(model, live, "primary") if live else None
        primary_error_rate = (primary.error_rate or 0.0) if primary is not None and primary.requests else 0.0
        stage = report_stage(**thresholds)
        shadows = []
        for snapshot in sorted(self.runner.snapshot(model), key=lambda s: s["shadow_version"]):
            version = snapshot["shadow_version"]
            # The rollout gates' view of the same data: both series since this shadow began.
            candidate, baseline, measure = stage_samples(
                self.windows, model, version, live or "", shadow=True,
                window_s=max(snapshot["age_s"], 1e-3),
            )  # fmt: skip
            verdict = recommend(
                model=model, shadow_version=version, stage=stage, candidate=candidate, baseline=baseline,
                agreement=self.agreement(model, version), latency_measure=measure,
            )  # fmt: skip
            shadows.append({**snapshot, "active": version in configured,
                            "recommendation": verdict.as_dict()})  # fmt: skip
        return {
            "model": model,
            "live_version": live,
            "shadow_versions": list(configured),
            "sample_rate": policy.shadow_sample_rate if policy is not None else None,
            "primary": {
                "version": live,
                "requests": primary.requests if primary is not None else 0,
                "error_rate": primary_error_rate,
                "p95_s": None if primary is None else primary.p95,
            },
            "shadows": shadows,
            "sink": None if self.sink is None else {"path": str(self.sink.path), **self.sink.stats()},
        }

    def status(self, model: str) -> dict[str, Any]:
        """A short shadow summary for the model's status."""
        policy = self.policies.get(model)
        keys = ("samples", "agreement_rate", "agreement_interval", "errors", "timeouts", "dropped")
        versions = {
            snapshot["shadow_version"]: {key: snapshot[key] for key in keys}
            for snapshot in self.runner.snapshot(model, examples=False)
        }
        return {
            "shadow": {
                "versions": list(policy.shadow_versions) if policy is not None else [],
                "sample_rate": policy.shadow_sample_rate if policy is not None else None,
                "in_flight": self.runner.in_flight,
                **self.loop.describe(),
                "shed_behind": self.skipped_behind,
                "stats": versions,
            }
        }

    def agreement(self, model: str, version: str) -> ShadowAgreement:
        """The candidate's agreement with the primary so far (what the rollout's shadow gate reads)."""
        for entry in self.runner.snapshot(model, examples=False):  # figures only: cheap, whatever was sent
            if entry.get("shadow_version") == version:
                return ShadowAgreement(
                    rate=entry.get("agreement_rate"), samples=int(entry.get("rows") or 0),
                    agreeing=int(entry.get("agreeing_rows") or 0),
                )  # fmt: skip
        return ShadowAgreement(rate=None, samples=0)

    def forget(self, model: str, version: str) -> None:
        """Drop a version's shadow stats (agreement then counts from the next shadow switch-on)."""
        self.runner.forget(model, version)

    async def watch_loop_lag(self) -> None:
        """Measure how late the event loop wakes up; `observe` sheds shadows while it is behind."""
        await self.loop.run()

    def close(self) -> None:
        """Stop the runner (waiting briefly for running shadows), then flush and close the sink."""
        self.runner.close(timeout=2.0)
        if self.sink is not None:
            self.sink.close()

    def _inline(self, loaded: LoadedVersion, config: ShadowConfig, model: str, version: str) -> bool:
        """`[shadow] on_loop`: a µs model's shadow runs on the loop after the response (every request
        compared, at the cost of primary latency); otherwise on the low-priority pool (shed under load)."""
        return bool(config.on_loop and loaded.inline and self.runner.inline_allowed(model, version))

    def _dropped(self, model: str, version: str, primary_version: str) -> None:
        self.runner.stats(model, version).record_dropped()
        self._count_drop(model, version, primary_version)

    def _count_drop(self, model: str, version: str, primary_version: str) -> None:
        if self.telemetry is not None:
            self.telemetry.record_shadow_drop(model, version, primary_version)

    def _on_result(self, result: ShadowResult) -> None:
        """Runs on the thread that settled the run: windows, then telemetry (metrics and linked span)."""
        # What the gates see is the model's doing, not the host's: a run that expired in the queue
        # never ran (a drop), and one that finished late having computed less than its budget was
        # starved by a busy host (its nice-19 thread), not slow. A run that never returned counts.
        starved = result.compute_s is not None and result.compute_s < result.budget_s
        if result.ran:
            self.windows.record(
                result.model, result.shadow_version, "shadow", result.shadow_latency_s,
                error=result.error is not None, timeout=result.timed_out and not starved,
                compute_s=result.compute_s,
            )  # fmt: skip
        if self.telemetry is not None:
            self.telemetry.on_shadow_result(result)
        for listener in self.result_listeners:
            listener(result)
