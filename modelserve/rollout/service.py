"""`RolloutService`: the rollout controller over the server's slots, routing policies and windows.

`ServingTarget` is the controller's view of the serving layer: traffic and shadow through the routing
policies, promotion through the registry's slots. Starting a rollout stages the version into the idle
slot when it is not there as the candidate. The controller evaluates in a lifespan task; after a
restart, rollouts saved in the state store are restored once the models have loaded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import anyio

from modelserve.errors import Conflict, ModelServeError
from modelserve.rollout.controller import RolloutController
from modelserve.rollout.events import RolloutEvent, RolloutStatus
from modelserve.rollout.gates import ExperimentEvidence, ShadowAgreement
from modelserve.rollout.plan import RolloutPlan
from modelserve.rollout.sample import WindowReader
from modelserve.rollout.target import OutcomeSource
from modelserve.rollout.webhooks import WebhookNotifier
from modelserve.serving.registry import ModelRegistry
from modelserve.state.policies import PolicyTable
from modelserve.state.store import StateStore
from modelserve.telemetry.windows import SlidingWindows

log = logging.getLogger("modelserve.rollout")


#: The fields of a rollout's status that a model's status shows.
SUMMARY_KEYS = ("candidate", "state", "stage", "stage_index", "stage_count", "weight", "shadow", "reason")


class ShadowEvidence(Protocol):
    """What rollouts need of the shadow service: agreement for the gate, and a fresh start."""

    def agreement(self, model: str, version: str) -> ShadowAgreement: ...
    def forget(self, model: str, version: str) -> None: ...


#: `(event name, attributes)`: where rollout decisions go as span events (telemetry's `record_event`).
EventRecorder = Callable[[str, dict[str, Any]], None]


class Leadership(Protocol):
    """Whether this replica leads (`fleet.leader.LeaderLease`)."""

    @property
    def is_leader(self) -> bool: ...


class SharedRolloutState(Protocol):
    """The rollout documents other replicas write too (`state.cached.CoordinatorStore`)."""

    async def reload(self, keys: list[str] = ..., logs: list[str] = ...) -> None: ...
    def writing(self, key: str) -> bool: ...
    async def flush(self) -> None: ...


class Outbox(Protocol):
    """Sends the logged events to the webhooks while this replica leads (`rollout.outbox`)."""

    async def run(self, models: list[str]) -> None: ...


class FleetGateData(WindowReader, Protocol):
    """Every replica's windows (`fleet.windows.FleetWindows`)."""

    async def refresh(self) -> None: ...


#: How often the leader looks for rollouts started or changed on other replicas.
ADOPT_INTERVAL_S = 0.5
#: How long an operator command's answer waits for its state to reach the shared backend.
COMMAND_WRITE_WAIT_S = 10.0

T = TypeVar("T")


class ServingCommands(Protocol):
    """Stage and promote as every replica carries them out (`fleet.commands.FleetCommands`)."""

    async def stage(self, model: str, version: str) -> object: ...
    async def promote(self, model: str) -> object: ...


class ServingTarget:
    """`RolloutTarget` over the registry's slots and the routing policies."""

    def __init__(
        self,
        registry: ModelRegistry,
        policies: PolicyTable,
        shadow: ShadowEvidence | None,
        commands: ServingCommands | None = None,
    ) -> None:
        self.registry = registry
        self.policies = policies
        self.shadow = shadow
        self.commands: ServingCommands = commands if commands is not None else registry

    async def live_version(self, model: str) -> str | None:
        slots = self.registry.models.get(model)
        return slots.live.version if slots is not None and slots.live is not None else None

    async def is_ready(self, model: str, version: str) -> bool:
        slots = self.registry.models.get(model)
        return slots is not None and version in slots.ready_versions

    async def set_traffic(self, model: str, candidate: str, weight: int) -> None:
        await self.policies.change(model, candidate=candidate, canary_weight=float(weight))

    async def set_shadow(self, model: str, candidate: str, on: bool) -> None:
        policy = self.policies.get(model)
        current = policy.shadow_versions if policy is not None else ()
        if on and candidate not in current and self.shadow is not None:
            self.shadow.forget(model, candidate)  # agreement counts from this switch-on
        versions = [v for v in current if v != candidate] + ([candidate] if on else [])
        await self.policies.change(model, shadow_versions=versions)

    async def promote(self, model: str, version: str) -> None:
        slots = self.registry.slots(model)
        if slots.live is not None and slots.live.version == version:
            return  # already live (a retry after a partly failed promote)
        idle = slots.idle
        if idle is None or idle.version != version or slots.idle_role != "candidate":
            await self.commands.stage(model, version)
        await self.commands.promote(model)
        # Clear the split only now: until the switch, the candidate keeps its 100 %.
        policy = self.policies.get(model)
        shadows = [v for v in (policy.shadow_versions if policy else ()) if v != version]
        await self.policies.change(model, candidate=None, canary_weight=0.0, shadow_versions=shadows)

    async def set_deadline(self, model: str, timeout_s: float | None) -> None:
        policy = self.policies.get(model)
        current = policy.request_timeout_s if policy is not None else None
        if current != timeout_s:  # a restore re-applies (or clears) it: no new revision when it holds
            await self.policies.change(model, request_timeout_s=timeout_s)


class RolloutService:
    """Rollouts of one server: start (staging first), describe, and the controller that runs them."""

    def __init__(
        self,
        *,
        registry: ModelRegistry,
        policies: PolicyTable,
        windows: SlidingWindows,
        store: StateStore,
        shadow: ShadowEvidence | None,
        experiment: Callable[[str, str], ExperimentEvidence | None] | None = None,
        outcomes: OutcomeSource | None = None,
        webhooks: WebhookNotifier | None = None,
        record_event: EventRecorder | None = None,
        commands: ServingCommands | None = None,
        on_change: Callable[[RolloutEvent], None] | None = None,
    ) -> None:
        self.registry = registry
        self.commands: ServingCommands = commands if commands is not None else registry
        self._store = store
        self.leader: Leadership | None = None
        self.shared: SharedRolloutState | None = None
        self.fleet_windows: FleetGateData | None = None
        self.outbox: Outbox | None = None
        self._notified: set[str] = set()
        self.shadow = shadow
        self.webhooks = webhooks
        self._record_event = record_event
        self._on_change = on_change  # the audit log
        self.controller = RolloutController(
            target=ServingTarget(registry, policies, shadow, commands),
            windows=windows,
            store=store,
            agreement=shadow.agreement if shadow is not None else None,
            experiment=experiment,
            outcomes=outcomes,
            webhooks=webhooks,
            on_event=self._on_event,
        )

    async def start(self, model: str, version: str, plan: RolloutPlan) -> RolloutStatus:
        """Stage `version` if needed, then start the plan; Conflict when the model has a rollout already."""
        current = self.controller.status(model)
        if current is not None and current.active:
            raise Conflict(
                f"model {model!r} already has a rollout to version {current.candidate!r} "
                f"({current.state}, stage {current.stage!r}); abort it or wait for it to finish"
            )
        if any(stage.shadow for stage in plan.stages) and self.shadow is None:
            raise Conflict(
                f"plan {plan.name!r} has a shadow stage but this server has no shadow feature; "
                "use a plan without shadow stages"
            )
        slots = self.registry.slots(model)
        live = slots.live.version if slots.live is not None else None
        idle = slots.idle
        staged = idle is not None and idle.version == version and slots.idle_role == "candidate"
        if version != live and not staged:
            await self.commands.stage(model, version)
        return await self.controller.start(model, version, plan)

    def status(self, model: str) -> RolloutStatus | None:
        """The model's rollout status, or None when it never had one."""
        return self.controller.status(model)

    def describe(self, model: str) -> dict[str, Any]:
        """Status, events and webhook counters of the model's rollout (the admin GET answer)."""
        status = self.controller.status(model)
        stats = self.webhooks.stats() if self.webhooks is not None else None
        return {
            "model": model,
            "rollout": status_dict(status) if status is not None else None,
            "events": [e.to_dict() for e in self.controller.events(model)],
            "webhooks": None if stats is None else dataclasses.asdict(stats),
        }

    def summary(self, model: str) -> dict[str, Any]:
        """A short rollout summary for the model's status."""
        current = self.controller.status(model)
        if current is None:
            return {"rollout": None}
        full = status_dict(current)
        return {"rollout": {key: full[key] for key in SUMMARY_KEYS}}

    async def restore(self) -> None:
        """Resume (or safely pause) the rollouts saved in the state store, for the loaded models."""
        await self.controller.restore(sorted(self.registry.models))

    # -- many replicas: one leader runs the controller; commands work on any replica -------------

    def share(
        self,
        leader: Leadership,
        shared: SharedRolloutState,
        windows: FleetGateData | None = None,
        outbox: Outbox | None = None,
    ) -> None:
        """Run in a fleet: the controller acts only while `leader` leads; state is `shared`; gates
        read `windows` (every replica's), refreshed before each round; webhooks are sent by the
        leader's `outbox` from the shared log and delivery cursor (not by the controller itself)."""
        self.leader, self.shared, self.fleet_windows = leader, shared, windows
        if windows is not None:
            self.controller.windows = windows
        if outbox is not None:
            self.outbox, self.controller.webhooks = outbox, None

    def _keys(self, models: list[str]) -> tuple[list[str], list[str]]:
        return [f"rollout.{m}" for m in models], [f"rollout-events.{m}" for m in models]

    async def lead(self) -> None:
        """The leader's term: take the rollouts over where the shared state says they are, run them,
        and adopt the ones other replicas start or change; forget them all when the term ends."""
        assert self.shared is not None
        models = sorted(self.registry.models)
        await self.shared.reload(*self._keys(models))
        self._notified = {
            str(e.get("event_id")) for m in models for e in self._store.read_log(f"rollout-events.{m}")
        }
        try:
            await self.controller.restore(models, keep_clock=True)
            async with anyio.create_task_group() as group:
                group.start_soon(self.controller.run)
                group.start_soon(self._adopt_forever, models)
                if self.outbox is not None:
                    group.start_soon(self.outbox.run, models)
        finally:
            self.controller.forget()

    async def _adopt_forever(self, models: list[str]) -> None:
        assert self.shared is not None
        while True:
            await anyio.sleep(ADOPT_INTERVAL_S)
            with contextlib.suppress(ModelServeError):
                await self.shared.reload(*self._keys(models))
                if self.fleet_windows is not None:
                    await self.fleet_windows.refresh()
            for model in models:
                saved = self._store.read(f"rollout.{model}")
                if saved is None or self.shared.writing(f"rollout.{model}"):
                    continue
                if int(saved.get("event_seq", 0)) > self.controller.saved_seq(model):
                    await self.controller.restore([model], keep_clock=True)
                self._notify_missed(model)

    def _notify_missed(self, model: str) -> None:
        """Webhooks for events another replica logged (a command it took); each id once."""
        if self.webhooks is None or self.outbox is not None:  # the outbox sends every logged event
            return
        for event in self._store.read_log(f"rollout-events.{model}"):
            event_id = str(event.get("event_id"))
            if event_id not in self._notified:
                self._notified.add(event_id)
                self.webhooks.notify(event)

    async def act(self, model: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run an operator command: on the leader directly; elsewhere on the shared state as it is
        now (the leader adopts the result within `ADOPT_INTERVAL_S`), sending no webhooks (the
        leader does). Either way the answer waits until the command's state is written: an
        acknowledged command survives a kill -9 that follows it."""
        if self.leader is None or self.shared is None:
            return await action()
        if self.leader.is_leader:
            try:
                return await action()
            finally:
                await self._written()
        await self.shared.reload(*self._keys([model]))
        await self.controller.adopt(model)
        webhooks, self.controller.webhooks = self.controller.webhooks, None
        try:
            return await action()
        finally:
            self.controller.webhooks = webhooks
            await self._written()
            self.controller.forget(model)

    async def _written(self) -> None:
        """Wait (bounded: the backend may be away) until the shared state has what was just written."""
        assert self.shared is not None
        with anyio.move_on_after(COMMAND_WRITE_WAIT_S) as waited:
            await self.shared.flush()
        if waited.cancelled_caught:
            log.warning("rollout command: its state is not written yet (the backend is slow or away)")

    async def current(self, model: str) -> dict[str, Any]:
        """`describe` from the shared state when another replica leads."""
        if self.leader is None or self.shared is None or self.leader.is_leader:
            return self.describe(model)
        await self.shared.reload(*self._keys([model]))
        await self.controller.adopt(model)
        try:
            return self.describe(model)
        finally:
            self.controller.forget(model)

    def _on_event(self, event: RolloutEvent) -> None:
        if self._on_change is not None:
            self._on_change(event)
        if self._record_event is not None:  # gates keyed by name flatten to `gates.<name>.observed`...
            attributes = event.to_dict()
            attributes["gates"] = {gate.pop("gate"): gate for gate in attributes["gates"]}
            self._record_event(f"modelserve.rollout.{event.kind}", attributes)


def status_dict(status: RolloutStatus) -> dict[str, Any]:
    """A RolloutStatus as JSON-ready data (with `active`, the gates as dicts, the time rounded)."""
    data = dataclasses.asdict(status)
    data.update(
        active=status.active,
        stage_elapsed_s=round(status.stage_elapsed_s, 3),
        gates=[gate.to_dict() for gate in status.gates],
    )
    return data
