"""Labels joined fleet-wide: the predictions of identified requests, kept in the coordinator.

In a fleet, the replica that serves an identified request remembers its prediction locally (as one
process does, `LabelJoin`) and queues it for the coordinator's decision store, as
`label:<model>/<request id>` (an hour, like the local join): version, kind, the values per row, and
the shadow versions' values that settled by then (written `settle_s` after the request, in batches).

A label posted to any replica takes that record: each take is atomic, so a label joins once
fleet-wide and a repeat, wherever it is posted, is a duplicate. The receiving replica scores it and
counts it in its own tally, which its monitoring snapshot carries: the fleet's accuracy and the
accuracy gate count each label once. When the request was served here, the local copy is scored
(it has every shadow's prediction). A label for an id not stored yet (served elsewhere moments
ago) is taken once more after `join_wait_s`; still unknown then, it is counted unknown. A request
known here whose record never reached the coordinator is joined here. Client-chosen and
server-issued ids of one request are both stored; the other is taken too once one joins.

The request path only appends to a bounded queue (the oldest dropped and counted beyond
`max_queued`). The backend away: the label call answers 503 with Retry-After, and queued
predictions wait (bounded).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

import anyio
import numpy as np

from modelserve.errors import RequestError
from modelserve.monitoring.outcomes import ACCURACY, ERROR, MAX_ROWS, LabelJoin, Prediction, label_strings
from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable

log = logging.getLogger("modelserve.monitoring")

PREDICTION_TTL_S = 3600.0
SETTLE_S = 0.25
JOIN_WAIT_S = 1.0
FLUSH_S = 0.1
MAX_QUEUED = 100_000
BATCH = 1000


def record_key(model: str, request_id: str) -> str:
    return f"label:{model}/{request_id}"


def encode(prediction: Prediction) -> dict[str, Any]:
    """The stored record of a prediction: class labels as the join compares them, numbers as floats."""

    def values(array: np.ndarray) -> list[Any]:
        if prediction.kind == ACCURACY:
            return label_strings(array)
        return [float(x) for x in np.asarray(array, dtype=np.float64).tolist()]

    return {
        "version": prediction.version,
        "kind": prediction.kind,
        "values": values(prediction.values),
        "experiment": prediction.experiment,
        "shadows": {version: values(found) for version, found in dict(prediction.shadows).items()},
        "aliases": list(prediction.aliases),
    }


def decode(model: str, body: Any) -> Prediction | None:
    """The prediction of a stored record, or None when the record is not one `encode` wrote."""
    try:
        kind = body["kind"]
        if kind not in (ACCURACY, ERROR) or not isinstance(body["version"], str):
            return None

        def values(found: Any) -> np.ndarray:
            if not isinstance(found, list) or not 0 < len(found) <= MAX_ROWS:
                raise ValueError("a stored prediction has 1..64 rows")
            return (
                np.asarray([str(v) for v in found])
                if kind == ACCURACY
                else np.asarray(found, dtype=np.float64)
            )

        return Prediction(
            model=model,
            version=body["version"],
            kind=kind,
            values=values(body["values"]),
            experiment=bool(body.get("experiment", False)),
            shadows={str(v): values(found) for v, found in dict(body.get("shadows") or {}).items()},
            aliases=tuple(str(a) for a in body.get("aliases") or ()),
        )
    except (KeyError, TypeError, ValueError):
        return None


class FleetLabels:
    """Predictions shared through the coordinator and labels joined once fleet-wide (module docstring)."""

    def __init__(
        self,
        coordinator: Coordinator,
        join: LabelJoin,
        *,
        ttl_s: float = PREDICTION_TTL_S,
        settle_s: float = SETTLE_S,
        join_wait_s: float = JOIN_WAIT_S,
        flush_s: float = FLUSH_S,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self.coordinator = coordinator
        self.join = join
        self.ttl_s, self.settle_s, self.join_wait_s, self.flush_s = ttl_s, settle_s, join_wait_s, flush_s
        self.max_queued = max_queued
        #: (monotonic time queued, request id, prediction), oldest first.
        self._queued: deque[tuple[float, str, Prediction]] = deque()
        self.dropped = 0
        self._lock = anyio.Lock()
        #: Set when something is queued (the writer's cue: an idle replica's writer sleeps).
        self._cue = anyio.Event()

    # -- request path (no I/O) ---------------------------------------------------------------------

    def remember(self, request_id: str, prediction: Prediction, *, also: str | None = None) -> None:
        """Queue the prediction under the request's id (and the client's own id, `also`)."""
        ids = (request_id,) if also is None or also == request_id else (request_id, also)
        now = time.monotonic()
        if len(ids) > 1:  # the shadows' dict stays shared: shadows that settle later reach the record
            prediction = replace(prediction, aliases=ids)
        for found in ids:
            self._queued.append((now, found, prediction))
        while len(self._queued) > self.max_queued:
            self._queued.popleft()
            self.dropped += 1
        self._cue.set()

    # -- writing -----------------------------------------------------------------------------------

    async def flush(self, *, everything: bool = False) -> None:
        """Store the queued predictions older than `settle_s` (all with `everything`); on
        CoordinatorUnavailable what was not stored stays queued."""
        async with self._lock:
            ripe = time.monotonic() - (0.0 if everything else self.settle_s)
            while self._queued and self._queued[0][0] <= ripe:
                batch: list[tuple[float, str, Prediction]] = []
                while self._queued and self._queued[0][0] <= ripe and len(batch) < BATCH:
                    batch.append(self._queued.popleft())
                try:
                    await self.coordinator.put_decisions(
                        [(record_key(p.model, rid), encode(p)) for _, rid, p in batch], self.ttl_s
                    )
                except BaseException:
                    self._queued.extendleft(reversed(batch))
                    raise

    async def run(self) -> None:
        """Store what is queued, in batches, until cancelled (asleep while nothing is)."""
        while True:
            await self._cue.wait()
            await anyio.sleep(max(self.flush_s, self.settle_s))  # gather a batch; let shadows settle
            self._cue = anyio.Event()
            try:
                await self.flush()
            except CoordinatorUnavailable as exc:
                log.warning("predictions not shared for labels yet: %s", exc)
                await anyio.sleep(1.0)
            if self._queued:  # not settled yet, or not stored: go round again
                self._cue.set()

    async def close(self) -> None:
        """At shutdown: store what is queued (bounded)."""
        with anyio.move_on_after(5.0), contextlib.suppress(CoordinatorUnavailable):
            await self.flush(everything=True)

    # -- labels ------------------------------------------------------------------------------------

    async def resolve(self, model: str, labels: list[tuple[str, Any]]) -> dict[str, int]:
        """Join `(request id, truth)` pairs once fleet-wide: `{"accepted", "unknown", "duplicate"}`.

        RequestError for a label that cannot be scored (the labels before it are counted)."""
        await self.flush(everything=True)  # ours first: a label posted here for a request served here
        keys = [record_key(model, request_id) for request_id, _ in labels]
        taken = await self.coordinator.take_decisions(keys)
        late = [i for i, took in enumerate(taken) if took.outcome == "unknown"]
        if late and self.join_wait_s > 0:  # perhaps served elsewhere and not stored yet: once more
            await anyio.sleep(self.join_wait_s)
            again = await self.coordinator.take_decisions([keys[i] for i in late])
            for i, took in zip(late, again, strict=True):
                taken[i] = took
        result = {"accepted": 0, "unknown": 0, "duplicate": 0}
        other_ids: list[str] = []
        try:
            for index, ((request_id, truth), took) in enumerate(zip(labels, taken, strict=True)):
                if took.outcome == "duplicate":
                    self.join.count("duplicate")
                    result["duplicate"] += 1
                    continue
                here = self.join.take(request_id, model)
                prediction = here if here is not None else decode(model, took.body) if took.body else None
                if prediction is None:  # unknown everywhere (or a record this release cannot read)
                    self.join.count("unknown")
                    result["unknown"] += 1
                    continue
                other_ids += [record_key(model, a) for a in prediction.aliases if a != request_id]
                try:
                    self.join.score(request_id, prediction, truth)
                except ValueError as exc:
                    raise RequestError(f"label {index}: {exc}") from None
                result["accepted"] += 1
        finally:
            if other_ids:  # the request's other id is labelled too: a label for it is a duplicate
                with contextlib.suppress(CoordinatorUnavailable):
                    await self.coordinator.take_decisions(other_ids)
        return result
