"""Join outcomes posted back by request id to the route decision that served the request.

Seldon Core v1's bandit routers broke because feedback lost its routing metadata; here the decision
itself (model, arm, reason, segment attributes) is kept in a bounded `cachetools.TTLCache` keyed by
request id, so an outcome always updates the arm that served it, and for a bandit decision the bandit
too. The cache is touched only from the event loop (cachetools is not thread-safe); no locks.

Memory is bounded in bytes: a decision keeps only the segment attributes its experiment's spec
names, each value cut to `MAX_SEGMENT_CHARS`, so headers a client repeats cannot grow the join.
The join keys are the request ids the server issued (see `experiments_feature`); a decision already
remembered under an id is never replaced, so reusing an id cannot move an outcome to another arm nor
reopen an id whose outcome was counted. Assignments are counted once per targeting key (a bounded LRU
of the keys seen recently), so the SRM check measures users, and one key repeated cannot force it.

Nothing is dropped silently: outcomes for ids that are unknown or whose decision expired or was
evicted count in `unknown_outcomes`, a second outcome for the same id counts in `duplicate_outcomes`
and is ignored, and decisions pushed out by the size bound count in `evicted_decisions`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cachetools import LRUCache, TTLCache

import modelserve.validation as validation
from modelserve.errors import RequestError
from modelserve.experiments.bandits import BanditPolicy
from modelserve.experiments.experiment import ExperimentCounters
from modelserve.routing.decision import RouteDecision

#: Reasons whose decisions belong to an experiment; overrides, pins and fallbacks would bias it.
EXPERIMENT_REASONS = ("experiment", "bandit")


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingDecision:
    """What the join remembers about one request until its outcome arrives."""

    model: str
    arm: str
    reason: str
    segments: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """An outcome joined to its decision and counted."""

    request_id: str
    model: str
    arm: str
    reason: str
    value: float
    segments: Mapping[str, str]


#: Segment values longer than this are cut (they come from request headers).
MAX_SEGMENT_CHARS = 128
#: Targeting keys remembered per join for counting assignments once per key.
MAX_COUNTED_KEYS = 100_000
#: Ids listed per kind (unknown, duplicate) in the answer to a batch of outcomes.
MAX_LISTED_IDS = 100

_CONSUMED = object()  # marks an id whose outcome was counted, so a repeat is a duplicate


class _CountingTTLCache(TTLCache[str, object]):
    """A TTLCache that counts entries pushed out by the size bound (expired ones are not counted)."""

    def __init__(self, maxsize: int, ttl: float, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttl=ttl, timer=timer)
        self.evictions = 0

    def popitem(self) -> tuple[Any, Any]:
        self.evictions += 1
        return super().popitem()


@dataclass(slots=True)
class _Attached:
    counters: ExperimentCounters
    bandit: BanditPolicy | None


class FeedbackJoin:
    """Remembers experiment decisions by request id and routes outcomes to counters and bandits.

    Event loop only. Attach an experiment's counters (and bandit, for bandit policies) per model.
    """

    def __init__(
        self, *, maxsize: int = 100_000, ttl: float = 3600.0, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self._pending = _CountingTTLCache(maxsize, ttl, timer)
        self._experiments: dict[str, _Attached] = {}
        # (model, targeting key, arm) -> None: assignments counted; bounded, event loop only.
        self._counted_keys: LRUCache[tuple[str, str, str], None] = LRUCache(maxsize=MAX_COUNTED_KEYS)
        self.reused_ids = 0
        self.unknown_outcomes = 0
        self.duplicate_outcomes = 0

    @property
    def evicted_decisions(self) -> int:
        return self._pending.evictions

    @property
    def pending(self) -> int:
        """Decisions still waiting for an outcome (or remembered as answered, for duplicates)."""
        return len(self._pending)

    def attach(self, counters: ExperimentCounters, bandit: BanditPolicy | None = None) -> None:
        """Start joining outcomes for `counters.spec.model`, replacing any previous experiment.

        Decisions still pending for a replaced experiment are forgotten, so their outcomes count
        as unknown instead of landing in the new experiment's counters.
        """
        model = counters.spec.model
        if model in self._experiments:
            self._forget(model)
        self._experiments[model] = _Attached(counters=counters, bandit=bandit)

    def detach(self, model: str) -> None:
        """Stop the model's experiment; later outcomes for its decisions count as unknown."""
        if self._experiments.pop(model, None) is not None:
            self._forget(model)

    def _forget(self, model: str) -> None:
        stale = [
            request_id
            for request_id, entry in list(self._pending.items())
            if isinstance(entry, PendingDecision) and entry.model == model
        ]
        for request_id in stale:
            self._pending.pop(request_id, None)
        for key in [key for key in self._counted_keys if key[0] == model]:
            self._counted_keys.pop(key, None)

    def record_decision(
        self, request_id: str, decision: RouteDecision, segments: Mapping[str, Any] | None = None
    ) -> bool:
        """Remember an experiment or bandit decision and count the assignment; False if not one.

        An id already remembered (pending or answered) is left as it is and counts in `reused_ids`.
        The assignment counts once per targeting key and arm (once per request without a key).
        """
        attached = self._experiments.get(decision.model)
        arm = decision.arm or decision.version
        if attached is None or decision.reason not in EXPERIMENT_REASONS or arm not in attached.counters.arms:
            return False
        if request_id in self._pending:
            self.reused_ids += 1
            return False
        key = decision.targeting_key
        if key is None:
            attached.counters.record_assignment(arm)
        elif (decision.model, key, arm) not in self._counted_keys:
            self._counted_keys[(decision.model, key, arm)] = None
            attached.counters.record_assignment(arm)
        else:
            self._counted_keys[(decision.model, key, arm)]  # refresh its place in the LRU
        wanted = attached.counters.spec.segments
        kept = {k: v for k, v in (segments or {}).items() if k in wanted}
        self._pending[request_id] = PendingDecision(
            model=decision.model, arm=arm, reason=decision.reason, segments=segment_strings(kept)
        )
        return True

    def validate_outcome(
        self,
        request_id: str,
        value: Any,
        *,
        guardrails: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> None:
        """Raise RequestError if `record_outcome` would reject this value; counts nothing.

        Lets a batch be checked whole before any of it is counted. Unknown ids pass (they are
        counted as unknown, not rejected).
        """
        entry = self._pending.get(request_id)
        if not isinstance(entry, PendingDecision) or (model is not None and entry.model != model):
            return
        attached = self._experiments.get(entry.model)
        if attached is None:
            return
        attached.counters.validate_outcome(value, guardrails)  # Thompson needs binary: 0/1 covers it

    def record_outcome(
        self,
        request_id: str,
        value: Any,
        segments: Mapping[str, Any] | None = None,
        *,
        guardrails: Mapping[str, Any] | None = None,
        model: str | None = None,
    ) -> Outcome | None:
        """Count an outcome against the arm that served `request_id`; None if unknown or duplicate.

        Segment attributes given here override those recorded with the decision. A value the
        metric rejects raises RequestError and changes nothing (the id stays open for a retry).
        With `model`, an id whose decision belongs to another model counts as unknown.
        """
        entry = self._pending.get(request_id)
        if entry is _CONSUMED:
            self.duplicate_outcomes += 1
            return None
        if isinstance(entry, PendingDecision) and model is not None and entry.model != model:
            entry = None
        attached = self._experiments.get(entry.model) if isinstance(entry, PendingDecision) else None
        if not isinstance(entry, PendingDecision) or attached is None:
            self.unknown_outcomes += 1
            return None
        attached.counters.validate_outcome(value, guardrails)
        merged = {**entry.segments, **segment_strings(segments)}
        bandit = attached.bandit if entry.reason == "bandit" else None
        if bandit is not None:
            bandit.update(entry.arm, float(value))  # validates first: raises before anything is counted
        attached.counters.record_outcome(entry.arm, value, segments=merged, guardrails=guardrails)
        self._pending[request_id] = _CONSUMED
        return Outcome(
            request_id=request_id,
            model=entry.model,
            arm=entry.arm,
            reason=entry.reason,
            value=float(value),
            segments=merged,
        )

    def stats(self) -> dict[str, int]:
        """Counters for status pages and metrics."""
        return {
            "pending": self.pending,
            "unknown_outcomes": self.unknown_outcomes,
            "duplicate_outcomes": self.duplicate_outcomes,
            "evicted_decisions": self.evicted_decisions,
            "reused_ids": self.reused_ids,
        }


def segment_strings(segments: Mapping[str, Any] | None) -> dict[str, str]:
    """Segment attributes as strings, names and values cut to `MAX_SEGMENT_CHARS`; None values dropped."""
    cut = MAX_SEGMENT_CHARS
    return {str(k)[:cut]: str(v)[:cut] for k, v in (segments or {}).items() if v is not None}


def tally_outcomes(request_ids: Iterable[str], statuses: Iterable[str]) -> dict[str, Any]:
    """The answer to a batch of outcomes: how many were accepted, unknown or duplicates, and the
    first `MAX_LISTED_IDS` ids of the last two kinds (so a client can resend or drop them)."""
    result: dict[str, Any] = {
        "accepted": 0,
        "unknown": 0,
        "duplicate": 0,
        "unknown_ids": [],
        "duplicate_ids": [],
    }
    for request_id, status in zip(request_ids, statuses, strict=True):
        result[status] += 1
        listed = result.get(f"{status}_ids")
        if listed is not None and len(listed) < MAX_LISTED_IDS:
            listed.append(request_id)
    return result


def parse_outcome(item: Any, index: int) -> tuple[str, Any, dict[str, Any] | None, dict[str, Any] | None]:
    """Check one posted outcome's shape: (request_id, value, segments, guardrails); RequestError if bad.

    Metric-specific checks (a binary metric takes 0 or 1) happen when the outcome joins its decision.
    """
    where = f"outcome {index}"
    if not isinstance(item, Mapping):
        raise RequestError(f"{where} must be a JSON object")
    unknown = set(item) - {"request_id", "value", "segments", "guardrails"}
    if unknown:
        raise RequestError(f"{where}: unknown fields {sorted(unknown)}")
    request_id = item.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 128:
        raise RequestError(f"{where}: 'request_id' must be a string of 1..128 characters")
    value = item.get("value")
    if isinstance(value, bool):
        value = int(value)
    validation.number(value, f"{where}: 'value'")
    extras: list[dict[str, Any] | None] = []
    for key in ("segments", "guardrails"):
        extra = item.get(key)
        if extra is not None and (
            not isinstance(extra, dict)
            or not all(isinstance(v, str | int | float | bool) for v in extra.values())
        ):
            raise RequestError(f"{where}: '{key}' must be an object of scalar values")
        extras.append(extra)
    return request_id, value, extras[0], extras[1]
