"""A model's warm set: every loaded, READY version, and the roles live / candidate / previous over it.

The set holds any number of warm versions (as many as `[serving] keep_warm`, the version policy and
the memory budget allow). Roles are names over it, never copies:

- **live**: the version that serves by default (exactly one once loaded);
- **candidate**: the version staged for promotion (at most one; 0% traffic until a canary or promote);
- **previous**: the most recent former live version that is still warm (`rollback` goes there);
- any other warm version has no role: kept for `rollback --to`, an experiment arm, a shadow.

`history` lists former live versions, oldest first, so `rollback --to V` can go back more than one
step. Blue/green is the two-version view: every version gets a slot label when it is loaded
(`blue`, `green`, then `slot-3`, `slot-4`, ...), and `live_slot` / `idle_slot` / `idle` / `idle_role`
describe live and the one other version that matters (the candidate, else the previous one).

A switch is one attribute assignment with no await between the readiness check and the set, so it
takes effect for the next request at once; requests already running keep the `LoadedVersion` they
resolved and finish on it. Changes happen under `lock` (the registry holds it).
"""

from __future__ import annotations

import anyio

from modelserve.config import ModelConfig
from modelserve.errors import Conflict, NotFound, NotReady
from modelserve.serving.repository import version_key
from modelserve.serving.runtime import LoadedVersion
from modelserve.serving.slots import SLOT_NAMES, Switch


class WarmSet:
    """The warm versions of one model, their roles, and the lock that serialises loads and switches."""

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config
        self.versions: dict[str, LoadedVersion] = {}  # in load order
        self.labels: dict[str, str] = {}  # version -> slot label
        self.live_version: str | None = None
        self.candidate: str | None = None
        self.history: list[str] = []  # former live versions, oldest first
        self.pinned: set[str] = set()  # loaded on purpose (`load`, version policy): never evicted implicitly
        self.lock = anyio.Lock()
        self._live: LoadedVersion | None = None
        self._ready: frozenset[str] = frozenset()

    # -- lookups (hot path: no I/O, no await) -----------------------------------------------------

    @property
    def live(self) -> LoadedVersion | None:
        return self._live

    @property
    def ready_versions(self) -> frozenset[str]:
        """Versions that routing may choose (cached: recomputed on every change)."""
        return self._ready

    def get(self, version: str | None = None) -> LoadedVersion:
        """The live version, or the named one if it is warm; NotFound / NotReady otherwise."""
        if version is None:
            loaded = self._live
            if loaded is None:
                raise NotReady(f"model {self.model!r} has no live version loaded")
        else:
            found = self.versions.get(version)
            if found is None:
                raise NotFound(f"model {self.model!r} version {version!r} is not loaded")
            loaded = found
        if not loaded.ready:
            raise NotReady(f"model {self.model!r} version {loaded.version} is not ready")
        return loaded

    @property
    def previous(self) -> str | None:
        """The most recent former live version that is still warm."""
        for version in reversed(self.history):
            if version in self.versions and version != self.live_version:
                return version
        return None

    def role_of(self, version: str) -> str:
        """The version's role: live, candidate, previous, or warm (held warm with no role)."""
        if version == self.live_version:
            return "live"
        if version == self.candidate:
            return "candidate"
        return "previous" if version == self.previous else "warm"

    # -- the blue/green view ----------------------------------------------------------------------

    def slot_of(self, version: str) -> str | None:
        return self.labels.get(version) if version in self.versions else None

    @property
    def live_slot(self) -> str:
        return self.labels.get(self.live_version or "", SLOT_NAMES[0])

    @property
    def idle_role(self) -> str | None:
        if self.candidate is not None:
            return "candidate"
        return "previous" if self.previous is not None else None

    @property
    def idle(self) -> LoadedVersion | None:
        """The candidate, else the previous version: the other half of the blue/green pair."""
        version = self.candidate if self.candidate is not None else self.previous
        return self.versions.get(version) if version is not None else None

    @property
    def idle_slot(self) -> str:
        idle = self.idle
        if idle is not None:
            return self.labels[idle.version]
        used = set(self.labels.values())
        return next((name for name in SLOT_NAMES if name not in used), self._free_label())

    @property
    def slots(self) -> dict[str, LoadedVersion | None]:
        """Slot label -> version (blue and green always listed, empty ones as None)."""
        by_label: dict[str, LoadedVersion | None] = {name: None for name in SLOT_NAMES}
        for version, label in sorted(self.labels.items(), key=lambda item: _label_order(item[1])):
            by_label[label] = self.versions[version]
        by_label.setdefault(self.idle_slot, None)  # an empty idle slot is listed too
        return by_label

    def _free_label(self) -> str:
        used = set(self.labels.values())
        for name in SLOT_NAMES:
            if name not in used:
                return name
        number = len(SLOT_NAMES) + 1
        while f"slot-{number}" in used:
            number += 1
        return f"slot-{number}"

    # -- changes: callers hold `lock` -------------------------------------------------------------

    def add(self, loaded: LoadedVersion, *, label: str | None = None) -> None:
        """Hold a loaded, warm version (no role yet); `label` restores a saved slot label."""
        used = {lab for ver, lab in self.labels.items() if ver != loaded.version}
        self.versions[loaded.version] = loaded
        self.labels[loaded.version] = label if label and label not in used else self._free_label()
        self._refresh()

    def set_live(self, loaded: LoadedVersion, *, label: str | None = None) -> None:
        """Make a warm version live without a switch record (initial load / restore)."""
        if loaded.version not in self.versions:
            self.add(loaded, label=label)
        self.live_version = loaded.version
        self._live = loaded
        self._refresh()

    def stage(self, version: str) -> None:
        """Give the candidate role to a warm, non-live version (the old candidate keeps no role)."""
        if version not in self.versions:
            raise NotFound(f"model {self.model!r} version {version!r} is not loaded")
        if version == self.live_version:
            raise Conflict(f"model {self.model!r} version {version} is already live")
        self.candidate = version
        if version in self.history:
            self.history.remove(version)

    def promote(self) -> Switch:
        """Make the candidate live; the old live version becomes the previous one."""
        if self.candidate is None:
            previous = self.previous
            held = f" (it holds the previous version {previous}; use rollback)" if previous else ""
            raise Conflict(f"model {self.model!r} has no staged candidate to promote{held}")
        return self._switch("promote", self.candidate)

    def rollback(self, to: str | None = None) -> Switch:
        """Go back to the previous version, or to any warm version `to` (not the candidate)."""
        if to is None:
            target = self.previous
            if target is None:
                raise Conflict(f"model {self.model!r} has no previous version kept warm to roll back to")
        else:
            target = self.rollback_target(to)
        return self._switch("rollback", target)

    def rollback_target(self, to: str) -> str:
        """`to` if `rollback --to` may switch to it; Conflict naming the reason otherwise."""
        if to == self.live_version:
            raise Conflict(f"model {self.model!r} version {to} is already live")
        if to not in self.versions:
            warm = ", ".join(self.warm_versions()) or "none"
            raise Conflict(
                f"model {self.model!r} version {to} is not warm (warm: {warm}); "
                f"load it first (`modelserve load {self.model} {to}`), then roll back"
            )
        if to == self.candidate:
            raise Conflict(f"model {self.model!r} version {to} is the staged candidate: promote it")
        return to

    def _switch(self, action: str, version: str) -> Switch:
        target = self.versions[version]
        if not target.ready:
            raise NotReady(f"model {self.model!r} version {version} is not ready")
        current = self.live_version
        # The switch itself: two assignments on the event loop, no await in between or before.
        self._live = target
        self.live_version = version
        if action == "promote":
            self.candidate = None
            if current is not None:
                self.history = [v for v in self.history if v != current] + [current]
        else:
            if version in self.history:
                del self.history[self.history.index(version) :]
            if self.candidate is None and current is not None:
                self.candidate = current  # as blue/green did: the version rolled back from can be re-promoted
        self._refresh()
        return Switch(
            model=self.model,
            action=action,
            from_version=current,
            to_version=version,
            live_slot=self.live_slot,
        )

    def remove(self, version: str) -> LoadedVersion:
        """Drop a warm, non-live version from the set; requests running on it finish."""
        if version == self.live_version:
            raise Conflict(f"model {self.model!r} version {version} is live; promote or roll back first")
        loaded = self.versions.pop(version, None)
        if loaded is None:
            raise NotFound(f"model {self.model!r} version {version!r} is not loaded")
        self.labels.pop(version, None)
        self.pinned.discard(version)
        if self.candidate == version:
            self.candidate = None
        self.history = [v for v in self.history if v != version]
        self._refresh()
        return loaded

    def clear_all(self) -> None:
        self.versions.clear()
        self.labels.clear()
        self.pinned.clear()
        self.history.clear()
        self.live_version = self.candidate = None
        self._live = None
        self._refresh()

    def eviction_order(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """Versions `keep_warm` may unload, first to go first: roleless ones, then the oldest previous.

        Never the live version, the candidate, a pinned version, or one in `keep` (in use elsewhere).
        """
        protected = {self.live_version, self.candidate, *self.pinned, *keep}
        free = [v for v in self.versions if v not in protected]
        roleless = [v for v in free if v not in self.history]
        return roleless + [v for v in self.history if v in free]

    def _refresh(self) -> None:
        self._ready = frozenset(v for v, loaded in self.versions.items() if loaded.ready)

    # -- views ------------------------------------------------------------------------------------

    def warm_versions(self) -> list[str]:
        return sorted(self.versions, key=version_key)

    def describe(self) -> dict[str, object]:
        live = self.live
        return {
            "model": self.model,
            "live_version": live.version if live else None,
            "live_slot": self.live_slot,
            "idle_slot": self.idle_slot,
            "idle_role": self.idle_role,
            "candidate": self.candidate,
            "previous": self.previous,
            "history": list(self.history),
            "keep_warm": self.config.warm.keep_warm,
            "warm": [
                {
                    "version": v,
                    "role": self.role_of(v),
                    "slot": self.labels[v],
                    "pinned": v in self.pinned,
                    **_memory(self.versions[v]),
                }
                for v in self.warm_versions()
            ],
            "slots": {name: (v.describe() if v else None) for name, v in self.slots.items()},
        }


def _memory(loaded: LoadedVersion) -> dict[str, object]:
    cost = loaded.memory
    return {"memory": cost.describe() if cost is not None else None}


def _label_order(label: str) -> tuple[int, str]:
    if label in SLOT_NAMES:
        return SLOT_NAMES.index(label), label
    number = label.rpartition("-")[2]
    return (int(number) if number.isdigit() else 1_000_000), label
