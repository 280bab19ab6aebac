"""The multi-model registry: loads versions warm, stages, promotes, rolls back, persists the warm set.

State is durable per model under the key `slots.<model>` (one small JSON document)::

    {"live_version": "3", "candidate": null, "history": ["1", "2"], "pinned": [],
     "warm": {"1": "blue", "2": "green", "3": "slot-3"},          # warm version -> slot label
     "live_slot": "slot-3", "idle_version": "2", "idle_role": "previous"}   # the blue/green view

On restart the live version comes from that state (never from a new folder appearing); on a first
start it is `live` from config.toml, else the highest version in the repository. The other warm
versions are restored after it, best effort (a version that fails to load only costs warmth), and
the version policy (`[serving] latest` / `versions`) adds its versions. Documents written before the
warm set (only `idle_version` / `idle_role`) are read too.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.to_thread

from modelserve.config import RuntimeOptions
from modelserve.errors import ConfigError, Conflict, LoadError, ModelServeError, NotFound, NotReady
from modelserve.serving.faults import FaultyRun, fault_for
from modelserve.serving.memory import MemoryCost, WarmEntry, check_budget, resident_bytes
from modelserve.serving.repository import ModelRepository, check_model_name, check_version, version_key
from modelserve.serving.runtime import LoadedVersion, load_version
from modelserve.serving.slots import Switch
from modelserve.serving.warmset import WarmSet
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.serving")

SwitchListener = Callable[[Switch], None]
#: `(model) -> versions` some feature needs warm (experiment arms, shadows): never evicted by keep_warm.
InUse = Callable[[str], frozenset[str]]


def measured_load(model: str, version: str, path: Any, options: RuntimeOptions) -> LoadedVersion:
    """`load_version` with its resident cost measured around it (blocking: call in a thread)."""
    before = resident_bytes()
    loaded = load_version(model, version, path, options)
    after = resident_bytes()
    delta = after - before if before is not None and after is not None else None
    loaded.memory = MemoryCost(rss_delta_bytes=delta, file_bytes=path.stat().st_size)
    return loaded


class ModelRegistry:
    """Every loaded model's warm set; the one object the server and middleware resolve versions from."""

    def __init__(
        self, repository: ModelRepository, store: StateStore, *, memory_budget: int | None = None
    ) -> None:
        self.repository = repository
        self.store = store
        self.memory_budget = memory_budget
        self.models: dict[str, WarmSet] = {}
        self.listeners: list[SwitchListener] = []
        self.in_use: list[InUse] = []
        self.last_switch: dict[str, Switch] = {}  # per model, the last promote or rollback made here
        # Loads are CPU-heavy: one at a time so serving keeps the other core (and RSS deltas stay apart).
        self._load_limiter = anyio.CapacityLimiter(1)
        self._budget_lock = anyio.Lock()
        self._measured: dict[tuple[str, str, int, int], int] = {}  # (model, version, mtime, size) -> bytes

    # -- lookups (event loop, synchronous, no I/O) ------------------------------------------------

    def slots(self, model: str) -> WarmSet:
        """The model's warm set; NotFound / NotReady with a message when it is not loaded."""
        try:
            return self.models[model]
        except KeyError:
            check_model_name(model)
            if model in self.repository.model_names():
                raise NotReady(f"model {model!r} is in the repository but not loaded") from None
            raise NotFound(f"unknown model {model!r}") from None

    warm_set = slots

    def resolve(self, model: str, version: str | None = None) -> LoadedVersion:
        """The version that serves `model` (its live one unless `version` is named)."""
        warm = self.models.get(model)
        if warm is None:
            self.slots(model)  # raises the right error
            raise AssertionError("unreachable")
        return warm.get(version)

    def memory(self) -> dict[str, Any]:
        """The budget, what the warm versions of every model cost, and what is free."""
        entries = self._warm_entries()
        used = sum(e.resident_bytes for e in entries)
        return {
            "budget_bytes": self.memory_budget,
            "used_bytes": used,
            "free_bytes": None if self.memory_budget is None else self.memory_budget - used,
            "process_rss_bytes": resident_bytes(),
        }

    # -- lifecycle ------------------------------------------------------------------------------

    async def load_all(self, names: tuple[str, ...] | None = None) -> None:
        for name in names if names is not None else tuple(self.repository.model_names()):
            await self.load_model(name)

    async def load_model(self, model: str) -> WarmSet:
        """Load a model's live version, then its other warm versions (saved state, version policy)."""
        check_model_name(model)
        versions = self.repository.versions(model)
        if not versions:
            raise NotFound(f"model {model!r} is not in the repository")
        config = self.repository.config(model)
        warm = self.models.get(model) or WarmSet(model, config)
        async with warm.lock:
            if warm.live is not None:
                return warm
            saved = _saved_state(self.store.read(f"slots.{model}") or {})
            live_version = str(saved["live_version"] or config.live or versions[-1])
            if live_version not in versions:
                raise LoadError(
                    f"model {model!r}: live version {live_version} is not in the repository "
                    f"(available: {', '.join(versions)})"
                )
            labels: dict[str, str] = saved["warm"]
            warm.set_live(await self._load(warm, live_version), label=labels.get(live_version))
            self.models[model] = warm
            policy = config.warm
            wanted = list(policy.versions) or (versions[-policy.latest :] if policy.latest else [])
            restore = [saved["candidate"], *reversed(saved["history"]), *saved["pinned"], *labels, *wanted]
            for version in dict.fromkeys(v for v in restore if v and v != live_version):
                if version not in versions:
                    if version in wanted:
                        log.warning("model %s: version %s of the version policy is not in the repository",
                                    model, version)  # fmt: skip
                    continue
                try:
                    warm.add(await self._load(warm, version), label=labels.get(version))
                except (LoadError, Conflict) as exc:  # the live version serves; a missing one costs warmth
                    log.warning("model %s: version %s not restored warm: %s", model, version, exc)
            if saved["candidate"] in warm.versions:
                warm.stage(saved["candidate"])
            warm.history = [v for v in saved["history"] if v in warm.versions and v != live_version]
            warm.pinned = {v for v in (*saved["pinned"], *wanted) if v in warm.versions}
            self._persist(warm)
        log.info("model %s: version %s live; warm: %s", model, live_version, ", ".join(warm.warm_versions()))
        return warm

    async def stage(
        self,
        model: str,
        version: str,
        *,
        check: Callable[[LoadedVersion], None] | None = None,
        evict: bool = True,
    ) -> LoadedVersion:
        """Load and warm `version` as the candidate with 0% traffic. The live version is never touched.

        Past `keep_warm`, the versions `WarmSet.eviction_order` names are unloaded once it is READY
        (with `evict=False` nothing is: a replica following the fleet's warm set unloads what it says).
        `check(loaded)` may refuse the version (raise) once it is loaded, before the warm set changes.
        """
        warm = self.slots(model)
        check_version(version)
        async with warm.lock:
            if warm.live_version == version:
                raise Conflict(f"model {model!r} version {version} is already live")
            loaded = warm.versions.get(version)
            if loaded is not None and check is not None:
                check(loaded)
            if loaded is None:
                loaded = await self._load(warm, version)
                if check is not None:
                    check(loaded)  # refused: the new session is dropped, nothing else changed
                # READY now; from here to the end no await: the old candidate loses its role, the
                # versions past keep_warm go (freeing their slot labels), the new one takes one.
                warm.candidate = None
                if evict:
                    self._retain(warm, incoming=1)
                warm.add(loaded)
            warm.stage(version)
            self._persist(warm)
        log.info("model %s: version %s staged warm in slot %s", model, version, warm.slot_of(version))
        return loaded

    async def load_version(self, model: str, version: str, *, pin: bool = True) -> LoadedVersion:
        """Add `version` to the warm set with no role, pinned (only `unload` removes it); no eviction."""
        warm = self.slots(model)
        check_version(version)
        async with warm.lock:
            loaded = warm.versions.get(version)
            if loaded is None:
                loaded = await self._load(warm, version)
                warm.add(loaded)
            if pin and version != warm.live_version:
                warm.pinned.add(version)
            self._persist(warm)
        log.info("model %s: version %s loaded warm in slot %s", model, version, warm.slot_of(version))
        return loaded

    async def promote(self, model: str) -> Switch:
        """Make the candidate live: one reference swap (see `_switch`)."""
        return await self._switch(model, "promote", None)

    async def rollback(self, model: str, to: str | None = None) -> Switch:
        """Switch back to the previous version, or to the warm version `to`; instant, nothing loads."""
        if to is not None:
            check_version(to)
        return await self._switch(model, "rollback", to)

    async def _switch(self, model: str, action: str, to: str | None) -> Switch:
        """Promote or roll back; the swap happens before the first await.

        Taking `lock` costs a checkpoint (the loop runs other requests first: milliseconds under
        load), so when no load holds it the switch runs at once, synchronously. A switch has no await
        between its checks and its assignments, so it cannot interleave with anything on the loop.
        """
        started = time.perf_counter()
        warm = self.slots(model)
        if warm.lock.locked():  # a load is between its awaits: let it finish first
            async with warm.lock:
                switch = self._swap(warm, action, to, started)
        else:
            switch = self._swap(warm, action, to, started)
        self._announce(switch)
        return switch

    def _swap(self, warm: WarmSet, action: str, to: str | None, started: float) -> Switch:
        switch = warm.promote() if action == "promote" else warm.rollback(to)
        switch = dataclasses.replace(switch, effect_us=(time.perf_counter() - started) * 1e6)
        self._persist(warm)
        return switch

    async def unload(self, model: str, version: str | None = None) -> None:
        """Unload one warm, non-live version, or with no version the whole model."""
        warm = self.slots(model)
        if version is not None:
            check_version(version)
        async with warm.lock:
            if version is None:
                warm.clear_all()
                del self.models[model]
                return
            if version != warm.live_version and version in warm.versions:
                users = self._in_use(model)
                if version in users:
                    raise Conflict(
                        f"model {model!r} version {version} is in use (an experiment arm or shadow): "
                        "stop that first"
                    )
            warm.remove(version)
            self._persist(warm)
        log.info("model %s: version %s unloaded", model, version)

    def pin(self, model: str, versions: frozenset[str]) -> None:
        """Make `versions` (those warm) the model's pinned set, as the fleet's warm set says."""
        warm = self.slots(model)
        pinned = {v for v in versions if v in warm.versions}
        if pinned != warm.pinned:
            warm.pinned = pinned
            self._persist(warm)

    def in_use_versions(self, model: str) -> frozenset[str]:
        """Versions a feature needs warm (experiment arms): never unloaded implicitly."""
        return self._in_use(model)

    def ready_models(self) -> list[str]:
        return [name for name, warm in self.models.items() if warm.live is not None and warm.live.ready]

    # -- internals ------------------------------------------------------------------------------

    def _in_use(self, model: str) -> frozenset[str]:
        found: set[str] = set()
        for hook in self.in_use:
            try:
                found |= hook(model)
            except Exception:  # a feature's hook must never block serving's own bookkeeping
                log.exception("in-use hook failed")
        return frozenset(found)

    def _retain(self, warm: WarmSet, *, incoming: int = 0) -> None:
        """Unload versions so `incoming` more fit in `keep_warm` (never live, candidate, pinned, in use)."""
        keep_warm = warm.config.warm.keep_warm
        excess = len(warm.versions) + incoming - keep_warm
        if excess <= 0:
            return
        for version in warm.eviction_order(self._in_use(warm.model))[:excess]:
            warm.remove(version)
            log.info("model %s: version %s unloaded (keep_warm = %d)", warm.model, version, keep_warm)

    def _warm_entries(self, exclude: tuple[str, str] | None = None) -> list[WarmEntry]:
        return [
            WarmEntry(
                model=name,
                version=version,
                role=warm.role_of(version),
                resident_bytes=loaded.memory.resident_bytes if loaded.memory is not None else 0,
            )
            for name, warm in sorted(self.models.items())
            for version, loaded in warm.versions.items()
            if (name, version) != exclude
        ]

    async def _load(self, warm: WarmSet, version: str) -> LoadedVersion:
        path = self.repository.model_path(warm.model, version)
        options = warm.config.serving
        stat = path.stat()
        key = (warm.model, version, stat.st_mtime_ns, stat.st_size)
        async with self._budget_lock:  # check, load and measure as one step: two loads never race the budget
            known = self._measured.get(key)
            check_budget(
                self.memory_budget,
                self._warm_entries(),
                model=warm.model,
                version=version,
                needed=known if known is not None else stat.st_size,
                measured=known is not None,
            )
            try:
                loaded = await anyio.to_thread.run_sync(
                    measured_load, warm.model, version, path, options, limiter=self._load_limiter
                )
            except ModelServeError:
                raise
            except Exception as exc:  # defensive: load_version already wraps, but never leak a 500
                raise LoadError(f"model {warm.model!r} version {version}: {exc}") from exc
            assert loaded.memory is not None
            self._measured[key] = loaded.memory.resident_bytes
            # The estimate may have been low: measured, it must still fit (the new version is not live).
            check_budget(
                self.memory_budget,
                self._warm_entries(),
                model=warm.model,
                version=version,
                needed=loaded.memory.resident_bytes,
                measured=True,
            )
        self._inject_faults(warm, loaded)
        return loaded

    @staticmethod
    def _inject_faults(slots: WarmSet, loaded: LoadedVersion) -> None:
        """Apply config.toml `[testing]` faults (opt-in, tests and demos only) after the clean warm-up."""
        try:
            spec = fault_for(slots.config.testing, loaded.version, where=f"model {slots.model!r}")
        except ConfigError as exc:
            raise LoadError(str(exc)) from exc
        if spec is None:
            return
        loaded.wrap_session(
            lambda run: FaultyRun(run, spec), describe=spec.describe(), force_thread=spec.slows
        )
        log.warning(
            "model %s version %s: FAULT INJECTION ACTIVE from config.toml [testing]: %s",
            slots.model,
            loaded.version,
            spec.describe(),
        )

    def _persist(self, warm: WarmSet) -> None:
        idle = warm.idle
        self.store.write(
            f"slots.{warm.model}",
            {
                "live_version": warm.live_version,
                "candidate": warm.candidate,
                "history": list(warm.history),
                "pinned": sorted(warm.pinned, key=version_key),
                "warm": {v: warm.labels[v] for v in warm.warm_versions()},
                "live_slot": warm.live_slot,
                "idle_version": idle.version if idle is not None else None,
                "idle_role": warm.idle_role,
            },
        )

    def _announce(self, switch: Switch) -> None:
        self.last_switch[switch.model] = switch
        log.info("model %s: %s %s -> %s", switch.model, switch.action, switch.from_version, switch.to_version)
        for listener in self.listeners:
            try:
                listener(switch)
            except Exception:  # a listener must never undo or block a switch
                log.exception("switch listener failed")

    def available_versions(self, model: str) -> list[str]:
        return sorted(self.repository.versions(model), key=version_key)


def _saved_state(saved: Mapping[str, Any]) -> dict[str, Any]:
    """The saved warm-set document, normalised; a document with only the blue/green view is read too."""
    try:
        live = saved.get("live_version")
        if "warm" in saved:
            labels = {str(v): str(label) for v, label in dict(saved["warm"]).items()}
            history = [str(v) for v in saved.get("history") or []]
            candidate = saved.get("candidate")
            pinned = [str(v) for v in saved.get("pinned") or []]
        else:  # blue/green: live in `live_slot`, the idle slot's version and role
            idle, role = saved.get("idle_version"), saved.get("idle_role")
            live_slot = str(saved["live_slot"]) if saved.get("live_slot") in ("blue", "green") else "blue"
            idle_slot = "green" if live_slot == "blue" else "blue"
            labels = {str(live): live_slot} if live else {}
            if idle and role in ("candidate", "previous"):
                labels[str(idle)] = idle_slot
            history = [str(idle)] if idle and role == "previous" else []
            candidate = idle if role == "candidate" else None
            pinned = []
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"malformed saved warm set: {exc!r}") from exc
    return {
        "live_version": str(live) if live else None,
        "candidate": str(candidate) if candidate else None,
        "history": history,
        "pinned": pinned,
        "warm": labels,
    }
