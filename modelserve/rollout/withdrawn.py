"""Versions taken off traffic because they failed their gates: promoting one by hand needs force.

A version is withdrawn when a rollout rolls it back, or when a guardrail takes its traffic away (a
manual canary, an experiment arm) or brings the previous version back after promoting it. Each is
recorded here with who withdrew it, why, and the evidence. `promote` of a withdrawn version then
answers 409 naming the rollback, unless forced with a reason (both recorded in the audit log).
Promoting the version (by a rollout that passed, or forced) clears its record.

One document per model, `withdrawn.<model>`, in the state store: durable, and shared by every
replica of a fleet (`refresh` re-reads it before a decision; `load` at startup).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from modelserve.errors import Conflict, RequestError
from modelserve.state.store import StateStore

#: Reads the named documents again from the shared state (`CoordinatorStore.reload` / `preload`).
Reload = Callable[[list[str]], Awaitable[None]]


def key_of(model: str) -> str:
    """The state key of a model's withdrawn versions."""
    return f"withdrawn.{model}"


class WithdrawnVersions:
    """The withdrawn versions of every model (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        *,
        reload: Reload | None = None,
        preload: Reload | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._reload = reload
        self._preload = preload
        self._clock = clock

    async def load(self, models: Sequence[str]) -> None:
        """Fetch the models' documents from the shared state (at startup, before any decision)."""
        if self._preload is not None:
            await self._preload([key_of(m) for m in models])

    async def refresh(self, model: str) -> None:
        """Re-read the model's document (another replica's guardrail may have written it)."""
        if self._reload is not None:
            await self._reload([key_of(model)])

    def get(self, model: str, version: str) -> dict[str, Any] | None:
        """Why `version` was withdrawn (`by`, `reason`, `time`, `evidence`), or None."""
        versions = (self.store.read(key_of(model)) or {}).get("versions", {})
        found = versions.get(version)
        return dict(found) if isinstance(found, dict) else None

    def record(
        self, model: str, version: str, *, by: str, reason: str, evidence: list[dict[str, Any]] | None = None
    ) -> None:
        """Mark `version` withdrawn (event loop only: a read-modify-write of the model's document)."""
        document = self.store.read(key_of(model)) or {}
        versions = dict(document.get("versions", {}))
        versions[version] = {"by": by, "reason": reason, "time": self._clock(), "evidence": evidence or []}
        self.store.write(key_of(model), {"versions": versions})

    def clear(self, model: str, version: str) -> None:
        """Forget `version`'s withdrawal (it was promoted)."""
        document = self.store.read(key_of(model)) or {}
        versions = dict(document.get("versions", {}))
        if versions.pop(version, None) is not None:
            self.store.write(key_of(model), {"versions": versions})

    def check_promotion(self, model: str, version: str, *, force: bool, reason: str) -> str:
        """Conflict when `version` is withdrawn and not forced; returns what a forced promotion
        overrides ("" when nothing). Forcing needs a reason: it goes into the audit log."""
        if force and not reason.strip():
            raise RequestError(
                "a forced promotion needs a reason (CLI --reason, API \"reason\"): it is recorded in "
                "the audit log"
            )
        found = self.get(model, version)
        if found is None:
            return ""
        ago = max(0.0, self._clock() - float(found.get("time", 0.0)))
        by, why = found.get("by"), found.get("reason")
        what = f"version {version} of {model!r} was rolled back {_ago(ago)} by {by}: {why}"
        if not force:
            raise Conflict(
                f"{what}. Promote it anyway with `modelserve promote {model} --force --reason WHY` "
                '(API: {"force": true, "reason": "..."}), or start a rollout of it again'
            )
        return f"forced over a rollback: {what}"


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"
