"""Experiments across replicas: one definition, one decision store, merged counters, leader's weights.

`FleetExperimentService` is the `ExperimentService` of a fleet (a shared SQLite or Redis
coordinator). What one process keeps in memory lives in the coordinator instead:

    experiment.<model>                    the definition {id, spec, started_at, stopped_at}: created
                                          with compare-and-set (one id, hence one hashing namespace,
                                          fleet-wide), stopped with compare-and-set
    experiment-weights.<model>            a bandit's routing weights and removed arms, written by the
                                          leader only (fenced); every replica routes by them
    experiment-counts.<model>.<id>        the counters as additive fields (`experiments/merged.py`)
    decision <model>/<request id>         {experiment, arm, reason, segments}, TTL `decision_ttl_s`

Per request nothing waits for the coordinator: `observe` queues the decision and counts the
assignment in memory; `flush()` writes queued decisions (one batch) and counter increments (each
with a `once` token, so a retry after an unclear failure never double-counts) every `flush_s`.

An outcome posted to any replica is joined there: it first flushes its own queue, then takes the
decisions in one batch (each take atomic: joined once, then "duplicate"; "unknown" when never
stored, expired or of another experiment). An outcome can arrive before the replica that served
the request flushed its decision: unknown ids are taken once more after `join_wait_s` (a few flush
intervals). An id still unknown then is reported as unknown and stays open, so posting it again
later joins it. The backend down: the feedback call answers 503 with Retry-After, never "unknown".

Every replica follows the definition (change hints and a poll every `poll_s`) and re-reads the
merged counters for reports. The leader (`experiments/leader.py`) recomputes bandit weights from
the merged counters, publishes them, and runs the experiment supervisor: exactly one replica does,
under the lease's fence.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import anyio
from cachetools import LRUCache

from modelserve.errors import ConfigError, Conflict, ModelServeError, RequestError
from modelserve.experiments import merged
from modelserve.experiments.feedback import (
    EXPERIMENT_REASONS,
    MAX_COUNTED_KEYS,
    parse_outcome,
    segment_strings,
    tally_outcomes,
)
from modelserve.experiments.outbox import Outbox
from modelserve.experiments.running import RunningExperiment
from modelserve.experiments.service import (
    MAX_EVENTS,
    REQUEST_ID_KEY,
    ExperimentService,
    segment_attributes,
)
from modelserve.inference.path import InferenceRecord
from modelserve.serving.registry import ModelRegistry
from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable, cas_update, current_fence
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.experiments")

FLUSH_S = 0.05
JOIN_WAIT_S = 0.25
POLL_S = 1.0
DECISION_TTL_S = 3600.0
IN_A_FLEET = "in a fleet, outcomes join through the shared state: use `await service.submit_outcomes(...)`"


def definition_key(model: str) -> str:
    return f"experiment.{model}"


def weights_key(model: str) -> str:
    return f"experiment-weights.{model}"


def counts_key(model: str, experiment_id: str) -> str:
    return f"experiment-counts.{model}.{experiment_id}"


def definition(experiment: RunningExperiment) -> dict[str, Any]:
    """The shared document of an experiment: what it is, not what it counted."""
    data = experiment.to_dict()
    del data["counters"], data["bandit"]
    return data


class FleetExperimentService(ExperimentService):
    """`ExperimentService` over a shared coordinator (see the module docstring)."""

    synchronous_outcomes_refused = IN_A_FLEET

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        store: StateStore,
        model_names: Callable[[], Iterable[str]],
        coordinator: Coordinator,
        replica_id: str,
        flush_s: float = FLUSH_S,
        join_wait_s: float = JOIN_WAIT_S,
        poll_s: float = POLL_S,
        decision_ttl_s: float = DECISION_TTL_S,
    ) -> None:
        super().__init__(registry=registry, store=store, model_names=model_names)
        self.coordinator = coordinator
        self.replica_id = replica_id
        self.flush_s, self.join_wait_s, self.poll_s = flush_s, join_wait_s, poll_s
        self.decision_ttl_s = decision_ttl_s
        self.outbox = Outbox(coordinator, replica_id=replica_id, decision_ttl_s=decision_ttl_s)
        self._counted_keys: LRUCache[tuple[str, str, str], None] = LRUCache(maxsize=MAX_COUNTED_KEYS)
        self._feedback: dict[str, dict[str, int]] = {}

    # -- the definition, shared --------------------------------------------------------------------

    async def start(
        self, model: str, spec_data: Mapping[str, Any], *, experiment_id: str | None = None
    ) -> RunningExperiment:
        """Create the experiment fleet-wide; Conflict if one runs (started on any replica)."""
        await self.adopt(model)
        experiment = self.new_experiment(model, spec_data, experiment_id=experiment_id)

        def create(body: dict[str, Any]) -> dict[str, Any]:
            if body and body.get("stopped_at") is None:
                raise Conflict(
                    f"model {model!r} already runs experiment {body.get('id')} (started on another "
                    f"replica): stop it first (`modelserve experiment stop {model}`)"
                )
            return definition(experiment)

        await cas_update(self.coordinator, definition_key(model), create)
        self.install(model, experiment)
        log.info("model %s: experiment %s started fleet-wide", model, experiment.experiment_id)
        return experiment

    async def stop(self, model: str) -> RunningExperiment:
        """Stop the experiment on every replica (later outcomes count as unknown)."""
        await self.adopt(model)
        experiment = self.get(model)
        if not experiment.running:
            raise Conflict(f"experiment {experiment.experiment_id} of model {model!r} is already stopped")
        stopped_at = time.time()

        def stop(body: dict[str, Any]) -> dict[str, Any]:
            if body.get("id") != experiment.experiment_id or body.get("stopped_at") is not None:
                raise Conflict(f"experiment {experiment.experiment_id} of model {model!r} changed meanwhile")
            return {**body, "state": "stopped", "stopped_at": stopped_at}

        # Under the leader's fence when the supervisor stops it: a deposed leader's stop is refused.
        await cas_update(self.coordinator, definition_key(model), stop, fence=current_fence.get())
        experiment.stopped_at = stopped_at
        self.join.detach(model)
        with contextlib.suppress(CoordinatorUnavailable):
            await self.flush()
        log.info("model %s: experiment %s stopped fleet-wide", model, experiment.experiment_id)
        return experiment

    async def adopt(self, model: str) -> None:
        """Follow the shared definition (and a bandit's published weights) of `model`."""
        doc = await self.coordinator.get(definition_key(model))
        if doc is None:
            return
        local = self.experiments.get(model)
        if local is None or local.experiment_id != doc.body.get("id"):
            try:
                local = RunningExperiment.from_dict({**doc.body, "counters": {"arms": {}}}, rng=self._rng)
            except ConfigError as exc:
                log.error("model %s: shared experiment not followed: %s", model, exc)
                return
            self.install(model, local)
        elif doc.body.get("stopped_at") is not None and local.running:
            local.stopped_at = float(doc.body["stopped_at"])
            self.join.detach(model)
        if local.bandit is not None and local.running:
            weights = await self.coordinator.get(weights_key(model))
            if weights is not None and weights.body.get("id") == local.experiment_id:
                local.bandit.adopt_weights(weights.body.get("weights", {}), weights.body.get("removed", {}))

    async def refresh(self, model: str) -> None:
        """The shared definition, the merged counters (this replica's flushed first) and events."""
        await self.adopt(model)
        experiment = self.experiments.get(model)
        if experiment is None:
            return
        with contextlib.suppress(CoordinatorUnavailable):
            await self.flush()
        fields = await self.coordinator.counters(counts_key(model, experiment.experiment_id))
        experiment.counters = merged.counters_from_fields(experiment.spec, fields)
        if experiment.bandit is not None:
            experiment.bandit.set_rewards(
                {
                    arm: (c.metric.n, c.metric.total, c.metric.total_sq)
                    for arm, c in experiment.counters.arms.items()
                }
            )
        self._feedback[model] = merged.feedback_from_fields(fields)
        self.events[model] = await self.coordinator.events(f"experiment-events.{model}", MAX_EVENTS)

    # -- per request (no I/O) ----------------------------------------------------------------------

    def observe(self, record: InferenceRecord) -> None:
        """Queue each served experiment decision for the shared store and count its assignment."""
        decision = record.decision
        if record.status != 200 or decision.reason not in EXPERIMENT_REASONS:
            return
        model = decision.model
        experiment = self.experiments.get(model)
        arm = decision.arm or decision.version
        if experiment is None or not experiment.running or arm not in experiment.counters.arms:
            return
        scope = record.scope
        request_id = record.request_id or uuid.uuid4().hex
        scope[REQUEST_ID_KEY] = request_id
        wanted = experiment.spec.segments
        kept = {k: v for k, v in segment_attributes(scope).items() if k in wanted} if wanted else {}
        self.outbox.decision(
            f"{model}/{request_id}",
            {"experiment": experiment.experiment_id, "arm": arm, "reason": decision.reason,
             "segments": segment_strings(kept)},
        )  # fmt: skip
        key = decision.targeting_key
        if key is not None:  # once per targeting key and arm (as one process counts them)
            if (model, key, arm) in self._counted_keys:
                self._counted_keys[(model, key, arm)]  # refresh its place in the LRU
                return
            self._counted_keys[(model, key, arm)] = None
        merged.add_assignment(self.outbox.fields(counts_key(model, experiment.experiment_id)), arm)

    # -- outcomes ----------------------------------------------------------------------------------

    async def submit_outcomes(
        self, items: list[Mapping[str, Any]], *, model: str | None = None
    ) -> dict[str, Any]:
        """Join outcomes to the decisions any replica stored: each id once (see the module docstring)."""
        if model is None:
            raise RequestError("in a fleet, outcomes are posted for a model (`/v2/models/{model}/feedback`)")
        parsed = [parse_outcome(item, i) for i, item in enumerate(items)]
        await self.adopt(model)
        experiment = self.experiments.get(model)
        if experiment is None:
            statuses: list[str] = ["unknown"] * len(parsed)
        else:
            if experiment.running:  # a bad value fails the batch before anything is taken or counted
                for _, value, _, guardrails in parsed:
                    experiment.counters.validate_outcome(value, guardrails)
            statuses = await self._join(model, experiment, parsed)
        return tally_outcomes((request_id for request_id, *_ in parsed), statuses)

    async def _join(
        self, model: str, experiment: RunningExperiment, parsed: list[tuple[str, Any, Any, Any]]
    ) -> list[str]:
        await self.outbox.flush_decisions()  # ours first: an outcome posted here for a request served here
        ids = [f"{model}/{request_id}" for request_id, *_ in parsed]
        taken = await self.coordinator.take_decisions(ids)
        late = [i for i, t in enumerate(taken) if t.outcome == "unknown"]
        if late and self.join_wait_s > 0:  # perhaps served elsewhere and not flushed yet: once more
            await anyio.sleep(self.join_wait_s)
            for i, again in zip(
                late, await self.coordinator.take_decisions([ids[i] for i in late]), strict=True
            ):
                taken[i] = again
        fields = self.outbox.fields(counts_key(model, experiment.experiment_id))
        statuses: list[str] = []
        for (_, value, segments, guardrails), took in zip(parsed, taken, strict=True):
            body = took.body or {}
            arm = body.get("arm")
            status = took.outcome if took.outcome != "joined" else "accepted"
            if status == "accepted" and (
                not experiment.running or body.get("experiment") != experiment.experiment_id
                or arm not in experiment.counters.arms
            ):  # fmt: skip
                status = "unknown"  # a decision of a stopped or replaced experiment
            if status == "accepted":
                merged.add_outcome(
                    fields, experiment.spec, str(arm), value,
                    segments={**body.get("segments", {}), **segment_strings(segments)}, guardrails=guardrails,
                )  # fmt: skip
            merged.add(fields, merged.field("f", status), 1)
            statuses.append(status)
        with contextlib.suppress(CoordinatorUnavailable):  # counted: written now or by the next flush
            await self.flush()
        return statuses

    async def record_event(self, model: str, kind: str, **detail: Any) -> dict[str, Any]:
        """Log a lifecycle event in the shared log, naming the replica that acted (the leader)."""
        return await super().record_event(model, kind, replica=self.replica_id, **detail)

    def feedback_stats(self, model: str) -> dict[str, int]:
        """Fleet-wide: outcomes joined, unknown, duplicate; this replica: decisions queued, dropped."""
        merged_stats = self._feedback.get(model, {})
        return {
            "joined": merged_stats.get("accepted", 0),
            "unknown_outcomes": merged_stats.get("unknown", 0),
            "duplicate_outcomes": merged_stats.get("duplicate", 0),
            "queued_decisions": self.outbox.pending_decisions,
            "dropped_decisions": self.outbox.dropped_decisions,
        }

    async def flush(self) -> None:
        """Write what requests and outcomes queued (see `Outbox.flush`)."""
        await self.outbox.flush()

    # -- lifespan ----------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Follow every model's shared experiment (nothing is restored from local files in a fleet)."""
        for model in sorted({*self._model_names(), *self.registry.models}):
            with contextlib.suppress(CoordinatorUnavailable):
                await self.refresh(model)

    async def run(self) -> None:
        """Flush what requests queued, and follow the shared definitions, until cancelled."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._flush_forever)
            group.start_soon(self._watch_forever)
            group.start_soon(self._poll_forever)

    async def _flush_forever(self) -> None:
        while True:
            await self.outbox.queued.wait()
            await anyio.sleep(self.flush_s)  # gather a batch
            self.outbox.queued = anyio.Event()
            try:
                await self.flush()
            except CoordinatorUnavailable as exc:
                log.warning("experiment decisions and counters not written yet: %s", exc)
                self.outbox.queued.set()
                await anyio.sleep(self.poll_s)

    async def _watch_forever(self) -> None:
        prefixes = ("experiment.", "experiment-weights.")
        while True:
            with contextlib.suppress(CoordinatorUnavailable):
                async for keys in self.coordinator.watch():
                    for model in sorted({k.split(".", 1)[1] for k in keys if k.startswith(prefixes)}):
                        with contextlib.suppress(CoordinatorUnavailable):
                            await self.adopt(model)
            await anyio.sleep(self.poll_s)

    async def _poll_forever(self) -> None:
        while True:
            await anyio.sleep(self.poll_s)
            for model in sorted({*self._model_names(), *self.registry.models}):
                try:
                    await self.refresh(model)
                except CoordinatorUnavailable:
                    break
                except ModelServeError as exc:
                    log.warning("model %s: shared experiment not refreshed: %s", model, exc)

    async def save(self, model: str) -> None:
        """Nothing to save: the definition is shared when it changes, counters as they grow."""

    async def save_all(self) -> None:
        """At shutdown: write what is still queued (bounded)."""
        with anyio.move_on_after(5.0), contextlib.suppress(CoordinatorUnavailable):
            await self.flush()
