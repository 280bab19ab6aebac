"""Serving commands that any replica accepts and every replica carries out.

Each command changes the model's desired document (a field-level compare-and-set) and applies the
new revision here before it answers; the other replicas apply it within a poll interval (usually
within milliseconds of the change hint). `promote` is a readiness barrier: the candidate must be
READY on every live replica before the live version changes anywhere, so no replica ever routes to
a version it has not warmed.

The warm set is fleet-wide too: `stage`, `load` and `unload` change the document's `warm` list (what
`keep_warm` unloaded here leaves it), and every replica loads and unloads to match. `load` waits until
every replica holds the version READY; if one cannot (its memory budget), the load is undone
everywhere and the answer names that replica and its reason, so a version is warm on all or none.
`rollback --to V` is instant on every replica because V is warm on every replica.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from modelserve.errors import Conflict, NotFound, RequestError
from modelserve.fleet.sync import PolicySync
from modelserve.serving.compatibility import incompatibilities
from modelserve.serving.memory import MemoryBudgetExceeded
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import check_version
from modelserve.serving.runtime import LoadedVersion
from modelserve.serving.slots import Switch
from modelserve.state.coordinator import current_fence
from modelserve.state.desired import POLICY_FIELDS, DesiredModel

#: How long `promote` waits for the candidate (`load` for the version) to be READY on every replica.
PROMOTE_BARRIER_S = 60.0


@dataclass(frozen=True, slots=True)
class Applied:
    """A command's result: the desired revision it wrote and what changed here."""

    desired: DesiredModel
    switch: Switch | None = None


class FleetCommands:
    """stage / promote / rollback / policy patch across every replica (see the module docstring)."""

    def __init__(self, *, sync: PolicySync, registry: ModelRegistry) -> None:
        self.sync = sync
        self.registry = registry

    async def stage(
        self, model: str, version: str, *, expect_rev: int | None = None, force: bool = False
    ) -> LoadedVersion:
        """Load `version` warm here, then make it the fleet's candidate (the others load it too).

        A version whose inputs or outputs differ from the live version's (`serving.compatibility`) is
        refused with Conflict, unless `force`.
        """
        live = self.registry.slots(model).live
        check = None if force or live is None else partial(require_compatible, live)
        before = set(self.registry.slots(model).versions)
        loaded = await self.registry.stage(model, version, check=check)
        evicted = frozenset(before - set(self.registry.slots(model).versions))  # past keep_warm, here

        def change(current: DesiredModel) -> dict[str, Any]:
            if current.live == version:
                raise Conflict(f"model {model!r} version {version} is already live")
            return {"staged": version, **self._warm_change(model, current, add=version, drop=evicted)}

        await self._write(model, change, expect_rev)
        return loaded

    async def promote(
        self, model: str, *, expect_rev: int | None = None, vet: Callable[[str], None] | None = None
    ) -> Applied:
        """Make the candidate live everywhere, once it is READY on every live replica.

        `vet(candidate)` may refuse the promotion (raise) before anything changes.
        """
        current = await self._current(model)
        candidate = current.staged or current.candidate
        if candidate is None or candidate == current.live:
            raise Conflict(f"model {model!r} has no staged candidate to promote")
        if vet is not None:
            vet(candidate)
        await self.sync.wait_ready(model, candidate, timeout_s=PROMOTE_BARRIER_S)

        def change(now: DesiredModel) -> dict[str, Any]:
            if (now.staged or now.candidate) != candidate or now.live != current.live:
                raise Conflict(f"model {model!r} changed while promoting {candidate}; retry")
            return {
                "live": candidate,
                "previous": now.live,
                "promoted_at": time.time(),
                "staged": None,
                "candidate": None,
                "canary_weight": 0.0,
                "shadow_versions": [v for v in now.shadow_versions if v != candidate],
                **_held(now, now.live, candidate),
            }

        return await self._switch(model, change, expect_rev, "promote", current.live)

    async def rollback(self, model: str, *, to: str | None = None, expect_rev: int | None = None) -> Applied:
        """Make the previous version (or `to`, any version warm here) live again everywhere.

        A version of the fleet's warm set is READY on every replica already, so the switch is instant
        everywhere; the check costs one read of the replicas' reports (a replica that could not load
        it makes this a Conflict naming it, instead of a replica left behind).
        """
        current = await self._current(model)
        if to is not None:
            self.registry.slots(model).rollback_target(to)  # Conflict unless `to` is warm and not live
        target = to if to is not None else current.previous
        if target is None:
            raise Conflict(f"model {model!r} has no previous version kept warm to roll back to")
        if self.sync.coordinator.shared and target in (current.warm or ()):
            refused = await self.sync.wait_loaded(model, target, timeout_s=PROMOTE_BARRIER_S)
            if refused:
                reasons = "; ".join(f"replica {replica}: {why}" for replica, why in sorted(refused.items()))
                raise Conflict(f"model {model!r} version {target} is not warm on every replica ({reasons})")

        def change(now: DesiredModel) -> dict[str, Any]:
            if (to is None and now.previous != target) or now.live != current.live:
                raise Conflict(f"model {model!r} changed while rolling back to {target}; retry")
            return {
                "live": target,
                "previous": None,
                "promoted_at": None,
                "staged": now.live,
                "candidate": None,
                "canary_weight": 0.0,
                "shadow_versions": [v for v in now.shadow_versions if v != target],
                **_held(now, now.live, target),
            }

        return await self._switch(model, change, expect_rev, "rollback", current.live)

    async def load(self, model: str, version: str) -> LoadedVersion:
        """Hold `version` warm (pinned, no role) on every replica; all or none (see the module docstring)."""
        check_version(version)
        loaded = await self.registry.load_version(model, version)  # refused here first: nothing written

        def add(current: DesiredModel) -> dict[str, Any]:
            change = self._warm_change(model, current, add=version)
            if version != current.live:
                change["pinned"] = [*current.pinned, version]
            return change

        await self._write(model, add, None)
        if not self.sync.coordinator.shared:
            return loaded
        refused = await self.sync.wait_loaded(model, version, timeout_s=PROMOTE_BARRIER_S)
        if refused:
            await self._write(model, lambda now: self._unwarm(model, now, version, undo=True), None)
            reasons = "; ".join(f"replica {replica}: {why}" for replica, why in sorted(refused.items()))
            budget = any("memory budget" in why for why in refused.values())
            error = MemoryBudgetExceeded if budget else Conflict
            raise error(
                f"model {model!r} version {version} cannot be held warm on every replica ({reasons}); "
                "the load was undone on every replica"
            )
        return loaded

    async def unload(self, model: str, version: str) -> None:
        """Stop holding `version` warm on every replica: never the live version or an experiment arm."""
        check_version(version)
        warm = self.registry.slots(model)
        current = await self._current(model)
        if version == current.live or version == warm.live_version:
            raise Conflict(f"model {model!r} version {version} is live; promote or roll back first")
        if version in self.registry.in_use_versions(model):
            raise Conflict(
                f"model {model!r} version {version} is in use (an experiment arm or shadow): stop that first"
            )
        if version in current.shadow_versions:
            raise Conflict(f"model {model!r} version {version} is shadowed: stop the shadow first")
        if version not in warm.versions and version not in (current.warm or ()):
            raise NotFound(f"model {model!r} version {version!r} is not loaded")
        if current.warm is None:  # not recorded yet: unload here, then record what this replica holds
            await self.registry.unload(model, version)
        await self._write(model, lambda now: self._unwarm(model, now, version), None)

    def _warm_change(
        self, model: str, current: DesiredModel, *, add: str | None = None, drop: frozenset[str] = frozenset()
    ) -> dict[str, Any]:
        """The `warm` list after adding one version and dropping others (recorded from here if absent)."""
        if current.warm is None:
            here = self.registry.slots(model)
            return {"warm": here.warm_versions(), "pinned": sorted(here.pinned)}
        kept = [v for v in current.warm if v not in drop]
        return {"warm": [*kept, add] if add is not None else kept}

    def _unwarm(
        self, model: str, current: DesiredModel, version: str, *, undo: bool = False
    ) -> dict[str, Any]:
        """Fields that take `version` out of the warm set (and out of the roles that would hold it)."""
        if version == current.live:
            if undo:  # made live meanwhile: nothing to undo
                return {}
            raise Conflict(f"model {model!r} version {version} is live; promote or roll back first")
        here = self.registry.slots(model)
        warm = current.warm if current.warm is not None else here.warm_versions()
        pinned = current.pinned if current.warm is not None else sorted(here.pinned)
        change: dict[str, Any] = {
            "warm": [v for v in warm if v != version],
            "pinned": [v for v in pinned if v != version],
        }
        if not undo:
            if current.previous == version:
                change["previous"] = None
            if current.staged == version:
                change["staged"] = None
            if current.candidate == version:
                change.update(candidate=None, canary_weight=0.0)
        return change

    async def update_policy(
        self, model: str, changes: dict[str, Any], *, expect_rev: int | None = None
    ) -> DesiredModel:
        """Change routing fields (canary weight, candidate, flag, shadows, ...) everywhere."""
        unknown = sorted(set(changes) - set(POLICY_FIELDS))
        if unknown:
            raise RequestError(f"unknown policy field(s): {', '.join(unknown)}")
        return await self._write(model, dict(changes), expect_rev)

    async def _current(self, model: str) -> DesiredModel:
        self.registry.slots(model)  # NotFound / NotReady for a model this replica does not serve
        current = await self.sync.desired.get(model)
        if current is None:
            raise Conflict(f"model {model!r} has no desired state yet; retry")
        return current

    async def _write(self, model: str, changes: Any, expect_rev: int | None) -> DesiredModel:
        self.registry.slots(model)
        # Under the leader's fence when the rollout controller writes: a deposed leader's write fails.
        fence = current_fence.get()
        desired = await self.sync.desired.patch(model, changes, expect_rev=expect_rev, fence=fence)
        await self.sync.apply(model, desired)
        return desired

    async def _switch(
        self, model: str, changes: Any, expect_rev: int | None, action: str, from_version: str
    ) -> Applied:
        desired = await self._write(model, changes, expect_rev)
        error = self.sync.errors.get(model)
        if error:
            raise Conflict(f"model {model!r}: {action} recorded but not applied here yet: {error}")
        slots = self.registry.slots(model)
        here = self.registry.last_switch.get(model)  # carries how long the swap took to take effect
        switch = Switch(
            model=model,
            action=action,
            from_version=from_version,
            to_version=desired.live,
            live_slot=slots.live_slot,
            effect_us=here.effect_us if here is not None and here.to_version == desired.live else None,
        )
        return Applied(desired, switch)


def require_compatible(live: LoadedVersion, candidate: LoadedVersion) -> None:
    """Conflict naming every difference when `candidate` cannot take `live`'s requests."""
    problems = incompatibilities(live.inputs, live.outputs, candidate.inputs, candidate.outputs)
    if problems:
        raise Conflict(
            f"version {candidate.version} of {candidate.model!r} is not compatible with live version "
            f"{live.version}: {'; '.join(problems)}. Stage it anyway with `modelserve stage "
            f'{candidate.model} {candidate.version} --force` (API: {{"force": true}})'
        )


def _held(current: DesiredModel, *versions: str) -> dict[str, Any]:
    """`warm` with `versions` in it (a switch keeps both sides warm), if the document records it."""
    if current.warm is None:
        return {}
    return {"warm": list(dict.fromkeys([*current.warm, *versions]))}
