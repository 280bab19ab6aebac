"""The multi-model registry: loads versions warm, stages, promotes, rolls back, persists the live one.

State is durable per model under the key `slots.<model>`: the live version and the idle slot's version
and role. On restart the live version comes from that state (never from a new folder appearing); on a
first start it is `live` from config.toml, else the highest version in the repository.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import anyio
import anyio.to_thread
import numpy as np

from modelserve.errors import ConfigError, Conflict, LoadError, ModelServeError, NotFound, NotReady
from modelserve.serving.faults import FaultyRun, fault_for
from modelserve.serving.repository import ModelRepository, check_model_name, check_version, version_key
from modelserve.serving.runtime import LoadedVersion, load_version
from modelserve.serving.slots import ModelSlots, Switch
from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.serving")

SwitchListener = Callable[[Switch], None]


class ModelRegistry:
    """Every loaded model's slots; the one object the server and middleware resolve versions from."""

    def __init__(self, repository: ModelRepository, store: StateStore) -> None:
        self.repository = repository
        self.store = store
        self.models: dict[str, ModelSlots] = {}
        self.listeners: list[SwitchListener] = []
        # Loads are CPU-heavy: one at a time so serving keeps the other core.
        self._load_limiter = anyio.CapacityLimiter(1)

    # -- lookups (event loop, synchronous, no I/O) ------------------------------------------------

    def slots(self, model: str) -> ModelSlots:
        try:
            return self.models[model]
        except KeyError:
            check_model_name(model)
            if model in self.repository.model_names():
                raise NotReady(f"model {model!r} is in the repository but not loaded") from None
            raise NotFound(f"unknown model {model!r}") from None

    def resolve(self, model: str, version: str | None = None) -> LoadedVersion:
        """The version that serves `model` (its live one unless `version` is named)."""
        slots = self.models.get(model)
        if slots is None:
            self.slots(model)  # raises the right error
            raise AssertionError("unreachable")
        return slots.get(version)

    async def predict(
        self, model: str, feeds: Mapping[str, np.ndarray], *, version: str | None = None
    ) -> dict[str, np.ndarray]:
        """In-process inference on the live (or named) version; no protocol, no copies."""
        return await self.resolve(model, version).infer(feeds)

    # -- lifecycle ------------------------------------------------------------------------------

    async def load_all(self, names: tuple[str, ...] | None = None) -> None:
        for name in names if names is not None else tuple(self.repository.model_names()):
            await self.load_model(name)

    async def load_model(self, model: str) -> ModelSlots:
        """Load a model's live version (and its warm idle version, from saved state)."""
        check_model_name(model)
        versions = self.repository.versions(model)
        if not versions:
            raise NotFound(f"model {model!r} is not in the repository")
        config = self.repository.config(model)
        existing = self.models.get(model)
        slots = existing or ModelSlots(model, config)
        async with slots.lock:
            if slots.live is not None:
                return slots
            saved = self.store.read(f"slots.{model}") or {}
            live_version = str(saved.get("live_version") or config.live or versions[-1])
            if live_version not in versions:
                raise LoadError(
                    f"model {model!r}: live version {live_version} is not in the repository "
                    f"(available: {', '.join(versions)})"
                )
            slots.live_slot = (
                saved.get("live_slot", "blue") if saved.get("live_slot") in ("blue", "green") else "blue"
            )
            slots.set_live(await self._load(slots, live_version))
            idle_version, idle_role = saved.get("idle_version"), saved.get("idle_role")
            if idle_version and idle_role in ("candidate", "previous") and str(idle_version) in versions:
                try:
                    slots.place_idle(await self._load(slots, str(idle_version)), idle_role)
                except LoadError as exc:  # the live version serves; a missing idle one only costs warmth
                    log.warning("model %s: idle version %s not restored: %s", model, idle_version, exc)
            self.models[model] = slots
            self._persist(slots)
        log.info("model %s: version %s live in slot %s", model, live_version, slots.live_slot)
        return slots

    async def stage(self, model: str, version: str) -> LoadedVersion:
        """Load and warm `version` into the idle slot with 0% traffic. The live slot is never touched."""
        slots = self.slots(model)
        check_version(version)
        async with slots.lock:
            live = slots.live
            if live is not None and live.version == version:
                raise Conflict(f"model {model!r} version {version} is already live")
            idle = slots.idle
            if idle is not None and idle.version == version:
                slots.idle_role = "candidate"
                self._persist(slots)
                return idle
            loaded = await self._load(slots, version)
            slots.place_idle(loaded, "candidate")
            self._persist(slots)
        log.info("model %s: version %s staged in slot %s", model, version, slots.idle_slot)
        return loaded

    async def promote(self, model: str) -> Switch:
        slots = self.slots(model)
        async with slots.lock:
            switch = slots.promote()
            self._persist(slots)
        self._announce(switch)
        return switch

    async def rollback(self, model: str) -> Switch:
        slots = self.slots(model)
        async with slots.lock:
            switch = slots.rollback()
            self._persist(slots)
        self._announce(switch)
        return switch

    async def unload(self, model: str, version: str | None = None) -> None:
        """Unload the idle version (when `version` names it) or, with no version, the whole model."""
        slots = self.slots(model)
        async with slots.lock:
            if version is None:
                slots.clear_all()
                del self.models[model]
                return
            live, idle = slots.live, slots.idle
            if live is not None and live.version == version:
                raise Conflict(f"model {model!r} version {version} is live; promote or roll back first")
            if idle is None or idle.version != version:
                raise NotFound(f"model {model!r} version {version!r} is not loaded")
            slots.clear_idle()
            self._persist(slots)

    def ready_models(self) -> list[str]:
        return [name for name, slots in self.models.items() if slots.live is not None and slots.live.ready]

    # -- internals ------------------------------------------------------------------------------

    async def _load(self, slots: ModelSlots, version: str) -> LoadedVersion:
        path = self.repository.model_path(slots.model, version)
        options = slots.config.serving
        try:
            loaded = await anyio.to_thread.run_sync(
                load_version, slots.model, version, path, options, limiter=self._load_limiter
            )
        except ModelServeError:
            raise
        except Exception as exc:  # defensive: load_version already wraps, but never leak a 500
            raise LoadError(f"model {slots.model!r} version {version}: {exc}") from exc
        self._inject_faults(slots, loaded)
        return loaded

    @staticmethod
    def _inject_faults(slots: ModelSlots, loaded: LoadedVersion) -> None:
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

    def _persist(self, slots: ModelSlots) -> None:
        live, idle = slots.live, slots.idle
        self.store.write(
            f"slots.{slots.model}",
            {
                "live_version": live.version if live else None,
                "live_slot": slots.live_slot,
                "idle_version": idle.version if idle else None,
                "idle_role": slots.idle_role if idle else None,
            },
        )

    def _announce(self, switch: Switch) -> None:
        log.info("model %s: %s %s -> %s", switch.model, switch.action, switch.from_version, switch.to_version)
        for listener in self.listeners:
            try:
                listener(switch)
            except Exception:  # a listener must never undo or block a switch
                log.exception("switch listener failed")

    def available_versions(self, model: str) -> list[str]:
        return sorted(self.repository.versions(model), key=version_key)
