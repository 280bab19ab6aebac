"""What requests leave for the shared state, written in batches off the request path.

The request path only appends to memory: a served experiment decision is queued for the decision
store, an assignment or an outcome becomes increments of additive counter fields
(`experiments/merged.py`). `flush()` writes them: queued decisions in batches of 1,000 (one
round-trip each), then each counter key's increments with a `once` token of this process, so a
retry after an unclear failure (a timeout after Redis applied it) never double-counts.

Nothing is lost while the backend is away: decisions and increments wait (decisions bounded by
`max_decisions`, the oldest dropped and counted in `dropped_decisions`; increments are sums, so
they stay as small as the set of fields). A decision stored twice is stored once (the backends
refuse to store an id again, even after it was taken).
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any

import anyio

from modelserve.experiments import merged
from modelserve.state.coordinator import Coordinator

#: Decisions queued while the backend is away; beyond this the oldest are dropped (and counted).
MAX_QUEUED_DECISIONS = 100_000
BATCH = 1000


class Outbox:
    """Decisions and counter increments on their way to the coordinator (see the module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        *,
        replica_id: str,
        decision_ttl_s: float,
        max_decisions: int = MAX_QUEUED_DECISIONS,
    ) -> None:
        self.coordinator = coordinator
        self.decision_ttl_s = decision_ttl_s
        self.max_decisions = max_decisions
        # Tokens of this process's increments: unique across restarts of the same replica id.
        self._incarnation = f"{replica_id}:{uuid.uuid4().hex[:8]}"
        self._sequence = itertools.count(1)
        self._decisions: list[tuple[str, dict[str, Any]]] = []
        self._deltas: dict[str, merged.Fields] = {}
        self._unsent: list[tuple[str, merged.Fields, str]] = []  # (key, amounts, once token), in order
        self._lock = anyio.Lock()
        self.dropped_decisions = 0
        #: Set whenever something is queued (the writer's cue); the writer clears it.
        self.queued = anyio.Event()

    @property
    def pending_decisions(self) -> int:
        return len(self._decisions)

    def decision(self, key: str, body: dict[str, Any]) -> None:
        """Queue one decision for the decision store (no I/O)."""
        self._decisions.append((key, body))
        if len(self._decisions) > self.max_decisions:
            del self._decisions[0]
            self.dropped_decisions += 1
        self.queued.set()

    def fields(self, counter_key: str) -> merged.Fields:
        """The increments queued for `counter_key`: add to them (no I/O)."""
        self.queued.set()
        return self._deltas.setdefault(counter_key, {})

    async def flush_decisions(self) -> None:
        """Write every queued decision; CoordinatorUnavailable keeps them queued."""
        async with self._lock:
            await self._flush_decisions()

    async def flush(self) -> None:
        """Write queued decisions, then counter increments; CoordinatorUnavailable keeps them queued."""
        async with self._lock:
            await self._flush_decisions()
            while self._unsent or self._deltas:
                if not self._unsent:
                    key, amounts = self._deltas.popitem()
                    self._unsent.append((key, amounts, f"{self._incarnation}:{next(self._sequence)}"))
                key, amounts, token = self._unsent[0]
                await self.coordinator.incr(key, amounts, once=token)  # a retried token is a no-op
                self._unsent.pop(0)

    async def _flush_decisions(self) -> None:
        while self._decisions:
            batch, self._decisions = self._decisions[:BATCH], self._decisions[BATCH:]
            try:
                await self.coordinator.put_decisions(batch, self.decision_ttl_s)
            except BaseException:
                self._decisions[:0] = batch
                raise
