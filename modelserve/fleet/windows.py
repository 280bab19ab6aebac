"""Fleet-wide gate data: every replica's sliding windows, merged for the rollout leader.

Each replica publishes its sub-windows (requests, errors, timeouts, latency and compute-time buckets
per `(model, version, role)`), stamped with wall-clock time, as its snapshot `windows/<replica>` about
once a second (idempotent: a retry overwrites, never double-counts). The leader's `FleetWindows`
answers `snapshot()`, `histogram()` and `compute_histogram()` like `SlidingWindows` does, from the
sum of every replica's sub-windows inside the window: the histograms merge exactly.

A replica that serves (it reports in `replicas`) but whose windows are older than `max_lag_s` makes
every snapshot empty, so the gates are inconclusive and hold: missing data never passes a stage.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import anyio

from modelserve.state.coordinator import Coordinator, CoordinatorUnavailable
from modelserve.telemetry.histogram import LogHistogram
from modelserve.telemetry.windows import SlidingWindows, WindowStats

log = logging.getLogger("modelserve.fleet")

WINDOWS = "windows"
REPLICAS = "replicas"


class FleetWindows:
    """Publishes this replica's windows and merges everyone's (see the module docstring)."""

    def __init__(
        self,
        *,
        coordinator: Coordinator,
        windows: SlidingWindows,
        replica_id: str,
        publish_s: float = 1.0,
        max_lag_s: float = 3.0,
        ttl_s: float = 10.0,
    ) -> None:
        self.coordinator = coordinator
        self.windows = windows
        self.replica_id = replica_id
        self.publish_s = publish_s
        self.max_lag_s = max_lag_s
        self.ttl_s = ttl_s
        #: Filled by `refresh()`: replica -> its published windows; and who is missing.
        self.remote: dict[str, dict[str, Any]] = {}
        self.missing: list[str] = []

    def export(self) -> dict[str, Any]:
        """This replica's sub-windows with wall-clock starts (the snapshot body)."""
        wall, mono = time.time(), time.monotonic()
        series = []
        recorded = self.windows.keys()  # (model, version, role) of every series
        for model, version, role in recorded:
            for start_mono, requests, errors, timeouts, latency, compute in self.windows.slices(
                model, version, role
            ):
                series.append([model, version, role, wall - (mono - start_mono), requests, errors, timeouts,
                               _histogram_to_json(latency), _histogram_to_json(compute)])  # fmt: skip
        return {"time": wall, "sub_window_s": self.windows.sub_window_s, "series": series}

    async def publish(self) -> None:
        await self.coordinator.put_snapshot(WINDOWS, self.replica_id, self.export(), self.ttl_s)

    async def refresh(self) -> None:
        """Fetch every replica's windows (the leader calls this before each evaluation round)."""
        published = await self.coordinator.snapshots(WINDOWS)
        serving = await self.coordinator.snapshots(REPLICAS)
        now = time.time()
        self.remote = {r: body for r, body in published.items() if r != self.replica_id}
        self.missing = sorted(
            replica
            for replica in serving
            if replica != self.replica_id
            and now - float((published.get(replica) or {}).get("time", 0)) > self.max_lag_s
        )

    def _merged(
        self, model: str, version: str, role: str, window_s: float | None, now: float | None,
        *, compute: bool = False,
    ) -> tuple[int, int, int, LogHistogram]:  # fmt: skip
        span = min(window_s or self.windows.window_s, self.windows.window_s)
        if self.missing:
            return 0, 0, 0, LogHistogram()
        local = self.windows.snapshot(model, version, role, window_s, now)
        if compute:
            histogram = self.windows.compute_histogram(model, version, role, window_s, now)
        else:
            histogram = self.windows.histogram(model, version, role, window_s, now)
        requests, errors, timeouts = local.requests, local.errors, local.timeouts
        since = time.time() - span - self.windows.sub_window_s
        for body in self.remote.values():
            for m, v, r, start, n, e, t, latency, *rest in body.get("series", ()):
                if (m, v, r) == (model, version, role) and start >= since:
                    requests, errors, timeouts = requests + n, errors + e, timeouts + t
                    if not compute:
                        histogram.merge(_histogram_from_json(latency))
                    elif rest:  # a replica of an older release publishes no compute times
                        histogram.merge(_histogram_from_json(rest[0]))
        return requests, errors, timeouts, histogram

    def snapshot(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> WindowStats:
        """Like `SlidingWindows.snapshot`, over every replica; empty while a replica is missing."""
        span = min(window_s or self.windows.window_s, self.windows.window_s)
        requests, errors, timeouts, histogram = self._merged(model, version, role, window_s, now)
        return WindowStats.of(requests, errors, timeouts, histogram, span)

    def histogram(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> LogHistogram:
        """The latency histogram over every replica (empty while a replica is missing)."""
        return self._merged(model, version, role, window_s, now)[3]

    def compute_histogram(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> LogHistogram:
        """Model-run CPU times over every replica (empty while a replica is missing)."""
        return self._merged(model, version, role, window_s, now, compute=True)[3]

    async def run(self) -> None:
        """Publish this replica's windows every `publish_s` until cancelled (every replica)."""
        while True:
            with contextlib.suppress(CoordinatorUnavailable):
                await self.publish()
            await anyio.sleep(self.publish_s)


def _histogram_to_json(histogram: LogHistogram) -> dict[str, Any]:
    return {
        "buckets": {str(k): v for k, v in histogram.buckets.items()},
        "count": histogram.count,
        "zeros": histogram.zeros,
        "total": histogram.total,
        "maximum": histogram.maximum,
    }


def _histogram_from_json(data: dict[str, Any]) -> LogHistogram:
    histogram = LogHistogram()
    histogram.buckets = {int(k): int(v) for k, v in data["buckets"].items()}
    histogram.count, histogram.zeros = int(data["count"]), int(data["zeros"])
    histogram.total, histogram.maximum = float(data["total"]), float(data["maximum"])
    return histogram
