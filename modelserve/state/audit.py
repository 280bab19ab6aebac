"""The audit log: every change to what a server serves — who made it, why, and what it changed.

One `AuditEntry` per state change: an admin call (stage, promote, canary, policy, shadow, unload, a
rollout command...), a decision of the rollout controller (advance, roll back, promote, a guardrail),
and what a restart restored. Each names its actor (the token scope that made the call, or the
component that acted on its own, plus a reason the client gave) and the model's state before and
after.

Durable and bounded: entries are written, off the event loop, into a ring of `segments` documents of
`segment_size` entries each (`audit.0`, `audit.1`, ...) through the state store, so the log never
holds more than `segments * segment_size` entries and an old segment is overwritten whole. `record()`
is synchronous and cheap (memory, a wake-up, a webhook queue); `run()` writes what changed and
`flush()` writes it now (at shutdown). An entry recorded less than a write ago is lost by `kill -9`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.to_thread

from modelserve.state.store import StateStore

log = logging.getLogger("modelserve.audit")

#: Actors that are not a token: what the server did by itself.
ROLLOUT, SYSTEM = "rollout", "system"
FORMAT = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Actor:
    """Who made a change: a token scope (`admin`, ...) or `rollout` / `system`, and the reason given."""

    scope: str
    reason: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One state change. `time` is wall-clock (epoch seconds); `seq` orders entries across restarts."""

    seq: int
    time: float
    model: str
    action: str
    actor: Actor
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: what the log stores, the admin API answers and webhooks receive."""
        return {
            "seq": self.seq,
            "time": self.time,
            "model": self.model,
            "action": self.action,
            "actor": self.actor.scope,
            "reason": self.actor.reason,
            "before": self.before,
            "after": self.after,
            "detail": self.detail,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> AuditEntry:
        return cls(
            seq=int(raw["seq"]),
            time=float(raw["time"]),
            model=str(raw["model"]),
            action=str(raw["action"]),
            actor=Actor(scope=str(raw["actor"]), reason=str(raw.get("reason", ""))),
            before=dict(raw.get("before") or {}),
            after=dict(raw.get("after") or {}),
            detail=str(raw.get("detail", "")),
        )


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """The keys whose value differs: `{key: (before, after)}`."""
    return {
        key: (before.get(key), after.get(key))
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    }


class AuditLog:
    """Records state changes in memory at once and in the state store soon after (module docstring)."""

    def __init__(
        self,
        store: StateStore,
        *,
        segments: int = 10,
        segment_size: int = 200,
        notify: Callable[[dict[str, Any]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if segments < 2 or segment_size < 1:
            raise ValueError("an audit log needs at least 2 segments of at least 1 entry")
        self.store = store
        self.segments = segments
        self.segment_size = segment_size
        self.notify = notify
        self._clock = clock
        self._entries: deque[AuditEntry] = deque(maxlen=segments * segment_size)
        self._next_seq = 1
        self._dirty: set[int] = set()  # segment numbers (seq // segment_size) not yet written
        self._wakeup: anyio.Event | None = None  # made by `run()`: an Event needs a running loop
        self._write_lock = anyio.Lock()

    @property
    def capacity(self) -> int:
        """The most entries the log keeps."""
        return self.segments * self.segment_size

    def keys(self) -> list[str]:
        """The state keys of the log's segments (for a store that must fetch them before `load`)."""
        return [f"audit.{slot}" for slot in range(self.segments)]

    def load(self) -> int:
        """Read the saved entries (blocking: call once at startup, before recording); returns the count."""
        found: dict[int, AuditEntry] = {}
        for slot, key in enumerate(self.keys()):
            try:
                document = self.store.read(key)
            except Exception:
                log.exception("audit segment %d is unreadable; its entries are skipped", slot)
                continue
            for raw in (document or {}).get("entries", ()):
                try:
                    entry = AuditEntry.from_dict(raw)
                except (KeyError, TypeError, ValueError):
                    log.warning("skipping an unreadable audit entry: %r", raw)
                    continue
                found[entry.seq] = entry
        for seq in sorted(found)[-self.capacity :]:
            self._entries.append(found[seq])
        if found:
            self._next_seq = max(found) + 1
        return len(self._entries)

    def record(
        self,
        model: str,
        action: str,
        *,
        actor: Actor,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
        detail: str = "",
    ) -> AuditEntry:
        """Add an entry (event loop only): kept now, written by `run()`/`flush()`, sent to `notify`."""
        entry = AuditEntry(
            seq=self._next_seq,
            time=self._clock(),
            model=model,
            action=action,
            actor=actor,
            before=dict(before or {}),
            after=dict(after or {}),
            detail=detail,
        )
        self._next_seq += 1
        self._entries.append(entry)
        self._dirty.add(entry.seq // self.segment_size)
        if self._wakeup is not None:
            self._wakeup.set()
        because = f" ({actor.reason})" if actor.reason else ""
        log.info("audit: %s %s by %s%s", model, action, actor.scope, because)
        if self.notify is not None:
            try:
                self.notify({"kind": "audit", **entry.to_dict()})
            except Exception:
                log.exception("audit: webhook notification failed")
        return entry

    def history(self, model: str | None = None, *, limit: int = 100) -> list[AuditEntry]:
        """The newest `limit` entries (of `model`, or of every model), oldest first."""
        entries = [e for e in self._entries if model is None or e.model == model]
        return entries[-limit:] if limit > 0 else []

    def status(self, model: str) -> dict[str, Any]:
        """The model's last recorded change (for its status): when, what, by whom and why."""
        latest = self.history(model, limit=1)
        if not latest:
            return {"last_change": None}
        entry = latest[0]
        return {
            "last_change": {
                "time": entry.time,
                "action": entry.action,
                "actor": entry.actor.scope,
                "reason": entry.actor.reason,
            }
        }

    async def flush(self) -> None:
        """Write every segment that changed since the last write (in a worker thread)."""
        async with self._write_lock:
            while self._dirty:
                segment = min(self._dirty)
                self._dirty.discard(segment)
                entries = [
                    e.to_dict() for e in self._entries if e.seq // self.segment_size == segment
                ]  # fmt: skip
                document = {"format": FORMAT, "segment": segment, "entries": entries}
                key = f"audit.{segment % self.segments}"
                try:
                    await anyio.to_thread.run_sync(self.store.write, key, document)
                except Exception:
                    self._dirty.add(segment)
                    raise

    async def run(self, retry_s: float = 1.0) -> None:
        """Write changes as they come until cancelled (a lifespan task); a failed write is retried."""
        while True:
            while not self._dirty:
                self._wakeup = anyio.Event()
                await self._wakeup.wait()
            try:
                await self.flush()
            except Exception:
                log.exception("audit: cannot write the log; retrying")
                await anyio.sleep(retry_s)
