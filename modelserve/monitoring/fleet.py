"""Monitoring figures of the whole fleet: every replica's snapshot, merged.

Every replica publishes its `MonitoringSnapshot` (`monitoring/snapshot.py`) as `monitoring/<replica>`
through the coordinator every `publish_s`, stamped with wall-clock time (idempotent: a retry
overwrites, never double-counts; kept `ttl_s`), and reads everyone's. The fleet's figures are sums:

- prediction distributions: histogram buckets and class counts add;
- drift: the current windows add per column only between replicas whose reference has the same
  fingerprint (a shared file reference); PSI and JS are computed on the summed bins (the PSI of the
  fleet, not an average of PSIs). Replicas with another reference are listed as not mergeable;
- accuracy: labelled and right rows add, overall and per 10 s slot (`labelled_since`, `paired_since`:
  what the accuracy gate reads in a fleet); a regressor's error statistics combine exactly; who was
  right where a shadow disagreed adds up;
- candidate vs live outputs: PSI and JS of the summed output windows of the two versions.

Staleness compares wall clocks: the replicas' clocks must agree to well within `max_lag_s` (NTP).

A replica that serves (it reports in `replicas`) with no snapshot, or whose snapshot is older than
`max_lag_s` (and was not its last, written at shutdown), makes the figures incomplete: `missing`
names it, and the gate's counts are zero, so the accuracy gate holds instead of deciding on part of
the labels. A snapshot lives `ttl_s` after its replica stopped writing; then its counts leave the sums.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import anyio
import anyio.to_thread
import numpy as np

from modelserve.fleet.sync import REPLICAS
from modelserve.monitoring.drift import compare_windows
from modelserve.monitoring.merge import merge_distributions, merge_drift, merge_windows
from modelserve.monitoring.monitor import Monitor
from modelserve.monitoring.outcomes import (
    SLOT_S,
    DisagreementCounts,
    LabelCounts,
    LabelJoin,
    OutcomeTally,
    summarize,
)
from modelserve.monitoring.snapshot import MonitoringSnapshot
from modelserve.monitoring.version import MonitorConfig
from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable

log = logging.getLogger("modelserve.monitoring")

MONITORING = "monitoring"


class FleetMonitoring:
    """Publishes this replica's monitoring snapshot and merges everyone's (see the module docstring)."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        monitor: Monitor,
        tally: OutcomeTally,
        labels: LabelJoin | None = None,
        replica_id: str,
        config_for: Callable[[str], MonitorConfig],
        publish_s: float = 2.0,
        max_lag_s: float = 6.0,
        ttl_s: float = 60.0,
    ) -> None:
        self.coordinator = coordinator
        self.monitor = monitor
        self.tally = tally
        self.labels = labels
        self.replica_id = replica_id
        self.config_for = config_for
        self.publish_s, self.max_lag_s, self.ttl_s = publish_s, max_lag_s, ttl_s
        #: Filled by `refresh()`: the other replicas' snapshots, and the replicas that serve.
        self.remote: dict[str, MonitoringSnapshot] = {}
        self.serving: set[str] = set()
        self._limiter: anyio.CapacityLimiter | None = None
        self._unread: set[str] = set()  # replicas whose snapshot could not be read (warned once)

    # -- publishing --------------------------------------------------------------------------------

    def export(self, *, final: bool = False, slots: bool = True) -> MonitoringSnapshot:
        """This replica's counts now (flushes the monitor: call off the event loop when it may be busy);
        without the label slots when not `slots` (the gate reads this replica's own from its tally)."""
        distributions, drift = self.monitor.export_counts()
        outcomes, series = self.tally.export_counts(slots=slots)
        disagreements = self.labels.export_disagreements() if self.labels is not None else []
        return MonitoringSnapshot(
            replica=self.replica_id, time=time.time(), final=final, distributions=tuple(distributions),
            drift=tuple(drift), outcomes=tuple(outcomes), slots=tuple(series),
            disagreements=tuple(disagreements),
        )  # fmt: skip

    async def publish(self, *, final: bool = False) -> None:
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        snapshot = await anyio.to_thread.run_sync(lambda: self.export(final=final), limiter=self._limiter)
        await self.coordinator.put_snapshot(MONITORING, self.replica_id, snapshot.to_json(), self.ttl_s)

    async def refresh(self) -> None:
        """Read every replica's snapshot and who serves (read back in a worker thread: a day of
        label slots is a few hundred kB of JSON per replica)."""
        published = await self.coordinator.snapshots(MONITORING)
        serving = await self.coordinator.snapshots(REPLICAS)
        others = {replica: body for replica, body in published.items() if replica != self.replica_id}
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        parsed = await anyio.to_thread.run_sync(
            lambda: {replica: MonitoringSnapshot.from_json(body) for replica, body in others.items()},
            limiter=self._limiter,
        )
        unreadable = {replica for replica, snapshot in parsed.items() if snapshot is None}
        for replica in sorted(unreadable - self._unread):  # warned once per replica, not every refresh
            log.warning(
                "replica %s: monitoring snapshot not readable, left out (it counts as missing)", replica
            )
        self._unread |= unreadable
        self.remote = {r: snapshot for r, snapshot in parsed.items() if snapshot is not None}
        self.serving = set(serving) - {self.replica_id}

    async def run(self) -> None:
        """Publish and refresh every `publish_s` until cancelled (every replica)."""
        while True:
            with contextlib.suppress(CoordinatorUnavailable):
                await self.publish()
                await self.refresh()
            await anyio.sleep(self.publish_s)

    async def close(self) -> None:
        """At shutdown: the last snapshot, marked final (a replica that stopped is not missing)."""
        with anyio.move_on_after(5.0), contextlib.suppress(CoordinatorUnavailable):
            await self.publish(final=True)

    # -- merged figures ----------------------------------------------------------------------------

    def missing(self, now: float | None = None) -> list[str]:
        """Replicas whose figures are not in the sums (none published) or are older than `max_lag_s`."""
        now = time.time() if now is None else now
        stale = {r for r, s in self.remote.items() if not s.final and now - s.time > self.max_lag_s}
        return sorted(stale | (self.serving - set(self.remote)))

    def labelled_since(
        self, model: str, version: str, since: float, role: str = "primary"
    ) -> tuple[int, int]:
        """Like `OutcomeTally.labelled_since`, over every replica; (0, 0) while a replica is missing."""
        labelled, correct = self._since(model, version, role, since, 2)
        correct_here, labelled_here = self.tally.labelled_since(model, version, since, role)
        return (0, 0) if self.missing() else (correct + correct_here, labelled + labelled_here)

    def paired_since(self, model: str, primary: str, shadow: str, since: float) -> tuple[int, int, int]:
        """Like `OutcomeTally.paired_since`, over every replica; zeros while a replica is missing."""
        rows, primary_correct, shadow_correct = self._since(model, primary, "paired:" + shadow, since, 3)
        here = self.tally.paired_since(model, primary, shadow, since)
        if self.missing():
            return 0, 0, 0
        return primary_correct + here[0], shadow_correct + here[1], rows + here[2]

    def _since(self, model: str, version: str, role: str, since: float, width: int) -> list[int]:
        first = int(since // SLOT_S)
        totals = [0] * width
        for snapshot in self.remote.values():
            for series in snapshot.slots:
                if (series.model, series.version, series.role) == (model, version, role) and series.slots:
                    recent = np.asarray(series.slots) >= first
                    for i, column in enumerate(series.counts[:width]):
                        totals[i] += int(np.asarray(column)[recent].sum())
        return totals

    def view(self, model: str, shift_pairs: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
        """The fleet's figures of `model` per version, shaped like `MonitoringService.versions` (JSON),
        and the output shift of each `(live, candidate)` of `shift_pairs` over the summed windows."""
        snapshots = [self.export(slots=False), *self.remote.values()]
        config = self.config_for(model)
        versions: dict[str, Any] = {}
        found = {d.version for s in snapshots for d in s.distributions if d.model == model}
        found |= {d.version for s in snapshots for d in s.drift if d.model == model}
        found |= {o.version for s in snapshots for o in s.outcomes if o.model == model}
        for version in sorted(found, key=lambda v: (len(v), v)):

            def outputs(role: str, version: str = version) -> dict[str, Any]:
                parts = (
                    d
                    for s in snapshots
                    for d in s.distributions
                    if (d.model, d.version, d.role) == (model, version, role)
                )
                return merge_distributions(parts, config.output_edges)

            def drift(kind: str, version: str = version) -> dict[str, Any]:
                parts = [
                    (s.replica, d)
                    for s in snapshots
                    for d in s.drift
                    if (d.model, d.version, d.kind) == (model, version, kind)
                ]
                return merge_drift(parts, config, prefer=self.replica_id)

            labelled = LabelCounts()
            for o in (o for s in snapshots for o in s.outcomes if (o.model, o.version) == (model, version)):
                labelled.merge(LabelCounts(o.labelled, o.correct, o.valued, o.abs_mean, o.abs_m2, o.sq_sum))
            inputs, outputs_drift = drift("inputs"), drift("outputs")
            versions[version] = {
                "distribution": outputs("primary"),
                "shadow_distribution": outputs("shadow"),
                "reference": inputs["reference"],
                "drift": {"inputs": inputs["columns"], "outputs": outputs_drift["columns"]},
                "not_mergeable": sorted(
                    {r["replica"] for r in (*inputs["not_mergeable"], *outputs_drift["not_mergeable"])}
                ),
                "accuracy": summarize(model, version, labelled).to_dict(),
            }  # fmt: skip
        pairs: dict[tuple[str, str], DisagreementCounts] = {}
        for d in (d for s in snapshots for d in s.disagreements if d.model == model):
            counts = pairs.setdefault((d.primary, d.shadow), DisagreementCounts())
            counts.rows += d.rows
            counts.primary_right += d.primary_right
            counts.shadow_right += d.shadow_right

        def outputs_of(version: str, role: str) -> dict[str, np.ndarray]:
            return merge_windows(
                d
                for s in snapshots
                for d in s.distributions
                if (d.model, d.version, d.role) == (model, version, role)
            )

        shift = []
        for live, candidate in shift_pairs:
            other = outputs_of(candidate, "primary")
            if not any(counts.sum() for counts in other.values()):  # a shadow-only candidate
                other = outputs_of(candidate, "shadow")
            shift += [
                {"version": candidate, "baseline": live, **result.to_dict()}
                for result in compare_windows(outputs_of(live, "primary"), other, config.drift)
            ]
        missing = self.missing()
        return {
            "replicas": sorted(s.replica for s in snapshots),
            "missing": missing,
            "complete": not missing,
            "versions": versions,
            "disagreements": [counts.to_dict(model, *pair) for pair, counts in sorted(pairs.items())],
            "output_shift": shift,
        }
