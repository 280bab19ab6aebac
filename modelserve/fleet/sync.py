"""Policy sync: every replica reconciles its slots and routing toward each model's desired document.

    watch (hint) or poll (backstop) -> re-read by revision -> cut exposure at once -> load what is
    missing -> swap (one reference assignment in the registry) -> install the policy -> publish

A replica publishes what it applied as its snapshot `replicas/<replica id>` (TTL a few heartbeats):
per model the applied revision, the live version and the READY versions, and the last error. That
is what `wait_ready` (the promotion barrier) and `wait_applied` read: a replica that stopped
publishing drops out of the fleet after the TTL instead of blocking everyone for ever.

Routing only ever targets READY versions, so a new candidate or weight is installed before its
version finished loading: until then its share is served by the live version, and a *reduction* of
exposure (abort, weight 0, shadow off) never waits for anything. The live version changes only after
the new one is warm here.

Unconfirmed exposure decays: a canary weight is only as good as the last time this replica read it
from the shared state. When no read succeeded for `exposure_ttl_s` (the backend is down or cut off),
every model's candidate weight drops to 0 here, with a warning and the reason in the status, while
the live version keeps serving; the next successful read restores what the document says. Raising
exposure needs the backend; cutting it never does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import anyio

from modelserve.errors import ConfigError, Conflict, ModelServeError, NotReady
from modelserve.serving.registry import ModelRegistry
from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable
from modelserve.state.desired import POLICY_FIELDS, DesiredModel, DesiredStates
from modelserve.state.policies import PolicyTable
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.fleet")

REPLICAS = "replicas"


class PolicySync:
    """Keeps this replica on every model's desired state (see the module docstring)."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        registry: ModelRegistry,
        policies: PolicyTable,
        replica_id: str,
        poll_s: float = 1.0,
        heartbeat_s: float = 1.0,
        replica_ttl_s: float = 5.0,
        exposure_ttl_s: float = 60.0,
    ) -> None:
        self.coordinator = coordinator
        self.desired = DesiredStates(coordinator)
        self.registry = registry
        self.policies = policies
        self.replica_id = replica_id
        self.poll_s = poll_s
        self.heartbeat_s = heartbeat_s
        self.replica_ttl_s = replica_ttl_s
        if not exposure_ttl_s > 0:
            raise ConfigError(f"the unconfirmed-exposure bound must be positive, got {exposure_ttl_s}")
        self.exposure_ttl_s = exposure_ttl_s
        #: Monotonic time of the last successful read of the shared state (confirms the exposure).
        self.confirmed_at = time.monotonic()
        #: Why the candidates' traffic is cut to 0 here (None while it is confirmed).
        self.exposure_cut: str | None = None
        self.applied: dict[str, DesiredModel] = {}
        self.errors: dict[str, str] = {}
        #: model -> version of the warm set this replica could not load -> why (e.g. its memory budget).
        self.refused: dict[str, dict[str, str]] = {}
        #: model -> why its desired state could not be read or seeded at startup (names the file).
        self.prepare_errors: dict[str, str] = {}
        self.backend_error: str | None = None
        self._locks: dict[str, anyio.Lock] = {}
        self._published: dict[str, Any] = {}

    # -- startup -----------------------------------------------------------------------------------

    async def prepare(self, models: Iterable[str], local: StateStore) -> dict[str, DesiredModel]:
        """Before the models load: read (or seed) each model's desired document and put the slots and
        policy it asks for into `local`, the registry's and policy table's own store, so the first
        load is already the desired live version. Models that cannot be seeded are left to load as
        they would alone."""
        found = {}
        for model in models:
            try:
                desired = await self.desired.get(model) or await self.desired.seed(
                    model, await self._initial(model)
                )
            except (ModelServeError, ValueError) as exc:
                log.warning("model %s: no desired state: %s", model, exc)
                self.prepare_errors[model] = f"saved state not applied: {exc}"
                continue
            local.write(f"slots.{model}", _local_slots(desired, local.read(f"slots.{model}") or {}))
            local.write(f"policy.{model}", {k: v for k, v in desired.body().items() if k in POLICY_FIELDS})
            found[model] = desired
        return found

    async def _initial(self, model: str) -> dict[str, Any]:
        """A first desired state from what this model had before (one process's files) and config.toml."""
        repository = self.registry.repository
        versions = repository.versions(model)
        config = repository.config(model)
        old_slots = await self.coordinator.get(f"slots.{model}")
        old_policy = await self.coordinator.get(f"policy.{model}")
        saved = old_slots.body if old_slots is not None else {}
        routing, shadow = config.routing, config.shadow
        initial: dict[str, Any] = {
            "live": str(saved.get("live_version") or config.live or (versions[-1] if versions else "")),
            "previous": saved.get("idle_version") if saved.get("idle_role") == "previous" else None,
            "candidate": routing.candidate,
            "canary_weight": routing.canary_weight,
            "flag": routing.flag,
            "allow_version_override": routing.allow_version_override,
            "targeting_header": routing.targeting_header,
            "shadow_versions": list(shadow.versions),
            "shadow_sample_rate": shadow.sample_rate,
        }
        if saved.get("idle_role") == "candidate" and saved.get("idle_version"):
            initial["staged"] = saved["idle_version"]
        elif saved.get("candidate"):  # the warm-set form
            initial["staged"] = saved["candidate"]
        if not initial["previous"] and saved.get("history"):
            initial["previous"] = saved["history"][-1]
        if old_policy is not None:
            initial.update({k: v for k, v in old_policy.body.items() if k in POLICY_FIELDS})
        return initial

    # -- applying ----------------------------------------------------------------------------------

    async def apply(self, model: str, desired: DesiredModel | None = None) -> DesiredModel | None:
        """Bring this replica to `desired` (default: the stored revision) unless it is there already."""
        lock = self._locks.setdefault(model, anyio.Lock())
        async with lock:
            if desired is None:
                desired = await self.desired.get(model)
                self.confirmed_at = time.monotonic()
            if desired is None and model in self.applied:  # the backend lost it: what we serve stands
                desired = await self.desired.seed(model, self.applied[model].body())
            if desired is None or model not in self.registry.models:
                return None
            applied = self.applied.get(model)
            if (
                applied is not None
                and applied.rev >= desired.rev
                and not self.errors.get(model)
                and not self.refused.get(model)
            ):
                return applied
            try:
                await self._reconcile(desired)
            except ModelServeError as exc:
                self.errors[model] = str(exc)
                log.warning("model %s: cannot apply desired revision %d yet: %s", model, desired.rev, exc)
            else:
                self.errors.pop(model, None)
                self.applied[model] = desired
            return desired

    def _install(self, desired: DesiredModel, live: str) -> None:
        policy = dataclasses.replace(desired.policy(), live=live)
        if self.exposure_cut is not None:
            policy = dataclasses.replace(policy, canary_weight=0.0)
        self.policies.install(policy)

    async def _reconcile(self, desired: DesiredModel) -> None:
        model, registry = desired.model, self.registry
        warm = registry.slots(model)
        live = warm.live_version or desired.live
        # 1. Routing now, on the live version we have: cuts of exposure take effect at once.
        self._install(desired, live)
        # 2. The live version: switch to it once it is warm here (loading it first if need be).
        follows = desired.warm is not None  # the fleet's warm set decides what goes, not keep_warm here
        if live != desired.live:
            if desired.live not in warm.versions or desired.live == warm.candidate:
                if warm.candidate != desired.live:
                    await registry.stage(model, desired.live, evict=not follows)
                await registry.promote(model)
            else:
                await registry.rollback(model, to=desired.live)
        # 3. The staged version (else the routing candidate) warm, with the candidate's role; a
        #    routing candidate that is not the staged one is loaded too.
        staged = desired.staged or desired.candidate
        if staged not in (None, desired.live) and warm.candidate != staged:
            await registry.stage(model, str(staged), evict=not follows)
        extra = desired.candidate
        if extra not in (None, desired.live, staged) and extra not in warm.versions:
            await registry.load_version(model, str(extra))
        self._install(desired, desired.live)
        # 4. The rest of the warm set: unload what left it, load what joined it.
        if follows:
            await self._reconcile_warm(desired)

    async def _reconcile_warm(self, desired: DesiredModel) -> None:
        """Hold exactly the fleet's warm set: never unloads the live version, a role or an experiment arm.

        Unloads first (memory for what loads next); a version this replica cannot load (its memory
        budget, a missing file) is reported as refused, and the rest still applies.
        """
        model, registry = desired.model, self.registry
        warm = registry.slots(model)
        keep = {*desired.wanted_versions(), *registry.in_use_versions(model), warm.live_version}
        for version in [v for v in warm.versions if v not in keep]:
            await registry.unload(model, version)
        refused: dict[str, str] = {}
        for version in desired.warm or ():
            if version not in warm.versions:
                try:
                    await registry.load_version(model, version, pin=False)
                except ModelServeError as exc:
                    refused[version] = str(exc)
                    log.warning("model %s: version %s of the warm set not loaded: %s", model, version, exc)
        registry.pin(model, frozenset(desired.pinned))
        if refused:
            self.refused[model] = refused
        else:
            self.refused.pop(model, None)

    async def apply_all(self, models: Iterable[str] | None = None) -> None:
        for model in sorted(models if models is not None else self.registry.models):
            try:
                await self.apply(model)
            except CoordinatorUnavailable as exc:
                self.backend_error = str(exc)
                return
        self.backend_error = None

    # -- unconfirmed exposure ----------------------------------------------------------------------

    def guard_exposure(self) -> None:
        """Cut every candidate's weight to 0 here once the shared state went unread for
        `exposure_ttl_s`; put back what the applied documents say once a read succeeded again."""
        unconfirmed_s = time.monotonic() - self.confirmed_at
        if unconfirmed_s > self.exposure_ttl_s and self.exposure_cut is None:
            self.exposure_cut = (
                f"candidate traffic cut to 0: the shared state was not read for {unconfirmed_s:.0f} s "
                f"(more than {self.exposure_ttl_s:g} s): {self.backend_error or 'no answer'}"
            )
            for model in sorted(self.applied):
                policy = self.policies.get(model)
                if policy is not None and policy.canary_weight > 0:
                    log.warning("model %s: %s (candidate %s had %g %%)", model, self.exposure_cut,
                                policy.candidate, policy.canary_weight)  # fmt: skip
                    self.policies.install(dataclasses.replace(policy, canary_weight=0.0))
        elif unconfirmed_s <= self.exposure_ttl_s and self.exposure_cut is not None:
            self.exposure_cut = None
            for model, desired in sorted(self.applied.items()):
                policy = self.policies.get(model)
                if policy is not None and desired.canary_weight != policy.canary_weight:
                    log.warning("model %s: shared state read again: candidate %s back to %g %%",
                                model, desired.candidate, desired.canary_weight)  # fmt: skip
                    self.policies.install(dataclasses.replace(policy, canary_weight=desired.canary_weight))

    # -- publishing --------------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What this replica has applied, per model (its snapshot body)."""
        models = {}
        for name, slots in self.registry.models.items():
            applied = self.applied.get(name)
            models[name] = {
                "rev": applied.rev if applied is not None else 0,
                "live": slots.live.version if slots.live is not None else None,
                "ready": sorted(slots.ready_versions),
                "error": self.errors.get(name),
                "refused": dict(self.refused.get(name) or {}),
            }
        return {"replica": self.replica_id, "time": time.time(), "models": models}

    async def publish(self) -> None:
        report = self.report()
        self._published = self._serving(report)
        await self.coordinator.put_snapshot(REPLICAS, self.replica_id, report, self.replica_ttl_s)

    @staticmethod
    def _serving(report: dict[str, Any]) -> dict[str, Any]:
        return {m: (r["live"], r["ready"], r["error"], r["refused"]) for m, r in report["models"].items()}

    def _serving_changed(self) -> bool:
        return self._serving(self.report()) != self._published

    async def replicas(self) -> dict[str, dict[str, Any]]:
        """Every live replica's last report (this one's included, fresh)."""
        reports = await self.coordinator.snapshots(REPLICAS)
        reports[self.replica_id] = self.report()
        return reports

    async def wait_ready(self, model: str, version: str, *, timeout_s: float) -> list[str]:
        """Wait until every live replica has `version` of `model` READY; the replicas, or NotReady."""
        lacking: list[str] = []
        with anyio.move_on_after(timeout_s):
            while True:
                reports = await self.replicas()
                lacking = sorted(
                    replica
                    for replica, report in reports.items()
                    if version not in (report.get("models", {}).get(model) or {}).get("ready", ())
                )
                if not lacking:
                    return sorted(reports)
                await anyio.sleep(0.05)
        raise NotReady(
            f"model {model!r} version {version} is not READY on every replica after {timeout_s:g} s "
            f"(lacking: {', '.join(lacking)}); stage it and retry"
        )

    async def wait_loaded(self, model: str, version: str, *, timeout_s: float) -> dict[str, str]:
        """Wait until every live replica has `version` READY ({}), or one refused to load it
        (replica -> why, as soon as one does); NotReady naming the lacking replicas on timeout."""
        lacking: list[str] = []
        with anyio.move_on_after(timeout_s):
            while True:
                reports = await self.replicas()
                states = {r: (report.get("models", {}).get(model) or {}) for r, report in reports.items()}
                refused = {r: s["refused"][version] for r, s in states.items()
                           if version in s.get("refused", ())}
                if refused:
                    return refused
                lacking = sorted(r for r, s in states.items() if version not in s.get("ready", ()))
                if not lacking:
                    return {}
                await anyio.sleep(0.05)
        raise NotReady(
            f"model {model!r} version {version} is not READY on every replica after {timeout_s:g} s "
            f"(lacking: {', '.join(lacking)}); it stays in the warm set, they keep trying"
        )

    async def wait_applied(self, model: str, rev: int, *, timeout_s: float) -> list[str]:
        """Wait until every live replica applied revision `rev` (or later) of `model`."""
        behind: list[str] = []
        with anyio.move_on_after(timeout_s):
            while True:
                reports = await self.replicas()
                behind = sorted(
                    replica
                    for replica, report in reports.items()
                    if (report.get("models", {}).get(model) or {}).get("rev", 0) < rev
                )
                if not behind:
                    return sorted(reports)
                await anyio.sleep(0.02)
        raise Conflict(
            f"revision {rev} of {model!r} not applied by {', '.join(behind)} within {timeout_s:g} s"
        )

    # -- the lifespan task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Watch, poll and heartbeat until cancelled."""
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_forever)
            group.start_soon(self._poll_forever)
            group.start_soon(self._guard_forever)

    async def _guard_forever(self) -> None:
        # Its own task: a read that hangs (not fails) must not delay the cut.
        while True:
            self.guard_exposure()
            await anyio.sleep(min(1.0, self.exposure_ttl_s / 4))

    async def _watch_forever(self) -> None:
        while True:
            try:
                async for keys in self.coordinator.watch():
                    models = {k.removeprefix("model.") for k in keys if k.startswith("model.")}
                    await self.apply_all(models & set(self.registry.models))
                    if self._serving_changed():  # what the promote barrier reads; else the heartbeat
                        with contextlib.suppress(CoordinatorUnavailable):
                            await self.publish()
            except CoordinatorUnavailable:
                pass
            await anyio.sleep(self.poll_s)  # the watch broke: the poll covers until it is back

    async def _poll_forever(self) -> None:
        next_poll = 0.0
        while True:
            now = time.monotonic()
            if now >= next_poll:
                await self.apply_all()
                next_poll = now + self.poll_s
            try:
                await self.publish()
            except CoordinatorUnavailable as exc:
                self.backend_error = str(exc)
            await anyio.sleep(self.heartbeat_s)


def _local_slots(desired: DesiredModel, saved: dict[str, Any]) -> dict[str, Any]:
    """The registry's saved warm set for a desired revision: what the first load at startup restores."""
    staged = desired.staged or desired.candidate
    idle = staged or desired.previous
    slots: dict[str, Any] = {
        "live_version": desired.live,
        "idle_version": idle if idle != desired.live else None,
        "idle_role": "candidate" if staged else "previous",
    }
    if desired.warm is not None:  # the whole warm set, with the slot labels this replica gave it before
        labels: dict[str, Any] = saved["warm"] if isinstance(saved.get("warm"), dict) else {}
        slots.update(
            candidate=staged if staged != desired.live else None,
            history=[desired.previous] if desired.previous not in (None, desired.live) else [],
            pinned=list(desired.pinned),
            warm={v: str(labels.get(v) or "") for v in desired.wanted_versions()},
        )
    return slots
