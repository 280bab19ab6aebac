"""Blue/green slots for one model.

One slot is live; the other is idle and holds either a staged **candidate** (never live yet) or the
**previous** live version, kept warm for an instant rollback. A switch is one attribute assignment with
no await between the readiness check and the set, so it takes effect for the next request at once;
requests already running keep the `LoadedVersion` they resolved and finish on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import anyio

from modelserve.config import ModelConfig
from modelserve.errors import Conflict, NotFound, NotReady
from modelserve.serving.runtime import LoadedVersion

SLOT_NAMES = ("blue", "green")


@dataclass(frozen=True, slots=True, kw_only=True)
class Switch:
    """What a promote or rollback did, for events and responses."""

    model: str
    action: str
    from_version: str | None
    to_version: str
    live_slot: str


class ModelSlots:
    """The two slots of a model and the lock that serialises loading and switching."""

    def __init__(self, model: str, config: ModelConfig) -> None:
        self.model = model
        self.config = config
        self.slots: dict[str, LoadedVersion | None] = {"blue": None, "green": None}
        self.live_slot = "blue"
        self.idle_role: str | None = None  # "candidate" | "previous" | None
        self.lock = anyio.Lock()
        self._ready: frozenset[str] = frozenset()

    @property
    def idle_slot(self) -> str:
        return "green" if self.live_slot == "blue" else "blue"

    @property
    def live(self) -> LoadedVersion | None:
        return self.slots[self.live_slot]

    @property
    def idle(self) -> LoadedVersion | None:
        return self.slots[self.idle_slot]

    @property
    def ready_versions(self) -> frozenset[str]:
        """Versions that routing may choose (cached: recomputed on every slot change)."""
        return self._ready

    def slot_of(self, version: str) -> str | None:
        for name, loaded in self.slots.items():
            if loaded is not None and loaded.version == version:
                return name
        return None

    def get(self, version: str | None = None) -> LoadedVersion:
        """The live version, or the named one if it is loaded; NotFound / NotReady otherwise."""
        if version is None:
            loaded = self.slots[self.live_slot]
            if loaded is None:
                raise NotReady(f"model {self.model!r} has no live version loaded")
        else:
            loaded = self._find(version)
        if not loaded.ready:
            raise NotReady(f"model {self.model!r} version {loaded.version} is not ready")
        return loaded

    def _find(self, version: str) -> LoadedVersion:
        for loaded in self.slots.values():
            if loaded is not None and loaded.version == version:
                return loaded
        raise NotFound(f"model {self.model!r} version {version!r} is not loaded")

    # -- changes: callers hold `lock` -------------------------------------------------------------

    def set_live(self, loaded: LoadedVersion) -> None:
        """Put a loaded, warm version in the live slot (initial load / restore)."""
        self.slots[self.live_slot] = loaded
        self._refresh()

    def place_idle(self, loaded: LoadedVersion, role: str) -> LoadedVersion | None:
        """Put a warm version in the idle slot; returns what it replaced."""
        replaced = self.slots[self.idle_slot]
        self.slots[self.idle_slot] = loaded
        self.idle_role = role
        self._refresh()
        return replaced

    def promote(self) -> Switch:
        idle = self.idle
        if idle is None or self.idle_role != "candidate":
            held = (
                f" (it holds the previous version {idle.version}; use rollback)" if idle is not None else ""
            )
            raise Conflict(f"model {self.model!r} has no staged candidate to promote{held}")
        return self._swap("promote", idle)

    def rollback(self) -> Switch:
        idle = self.idle
        if idle is None or self.idle_role != "previous":
            raise Conflict(f"model {self.model!r} has no previous version kept warm to roll back to")
        return self._swap("rollback", idle)

    def _swap(self, action: str, target: LoadedVersion) -> Switch:
        if not target.ready:
            raise NotReady(f"model {self.model!r} version {target.version} is not ready")
        current = self.live
        # The switch itself: one assignment, no await in between.
        self.live_slot = self.idle_slot
        self.idle_role = "previous" if action == "promote" else "candidate"
        self._refresh()
        return Switch(
            model=self.model,
            action=action,
            from_version=current.version if current else None,
            to_version=target.version,
            live_slot=self.live_slot,
        )

    def clear_idle(self) -> LoadedVersion | None:
        removed = self.slots[self.idle_slot]
        self.slots[self.idle_slot] = None
        self.idle_role = None
        self._refresh()
        return removed

    def clear_all(self) -> None:
        self.slots = {"blue": None, "green": None}
        self.idle_role = None
        self._refresh()

    def _refresh(self) -> None:
        self._ready = frozenset(v.version for v in self.slots.values() if v is not None and v.ready)

    def describe(self) -> dict[str, object]:
        live, idle = self.live, self.idle
        return {
            "model": self.model,
            "live_version": live.version if live else None,
            "live_slot": self.live_slot,
            "idle_slot": self.idle_slot,
            "idle_role": self.idle_role,
            "candidate": idle.version if idle is not None and self.idle_role == "candidate" else None,
            "previous": idle.version if idle is not None and self.idle_role == "previous" else None,
            "slots": {name: (v.describe() if v else None) for name, v in self.slots.items()},
        }
