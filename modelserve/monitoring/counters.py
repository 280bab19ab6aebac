"""Counters of the events people alert on: rollouts started/promoted/rolled back, guardrail actions.

Labels are bounded (model, and an outcome or action from a short fixed vocabulary), so the series
count stays small. `count` is thread-safe and cheap; the metrics collector reads `snapshot()`.
"""

from __future__ import annotations

import threading

#: Rollout event kinds counted, by the `outcome` label they get.
ROLLOUT_OUTCOMES = {
    "started": "started",
    "advanced": "advanced",
    "promoted": "promoted",
    "rolled_back": "rolled_back",
    "aborted": "aborted",
    "paused": "paused",
}


class EventCounters:
    """Monotonic counts by (family, labels)."""

    ROLLOUTS = "rollouts"
    GUARDRAILS = "guardrail_actions"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, tuple[str, ...]], int] = {}

    def count(self, family: str, *labels: str, amount: int = 1) -> None:
        key = (family, labels)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def rollout_event(self, model: str, kind: str) -> None:
        """Count a rollout event of `kind` (`modelserve.rollout.events`) if it is one people alert on."""
        outcome = ROLLOUT_OUTCOMES.get(kind)
        if outcome is not None:
            self.count(self.ROLLOUTS, model, outcome)

    def get(self, family: str, *labels: str) -> int:
        with self._lock:
            return self._counts.get((family, labels), 0)

    def snapshot(self, family: str) -> dict[tuple[str, ...], int]:
        with self._lock:
            return {labels: n for (name, labels), n in self._counts.items() if name == family}
