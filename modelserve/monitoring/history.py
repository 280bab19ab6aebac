"""A bounded time series per (model, version) for the status page's charts.

A sampler appends one point per interval (requests, errors, latency quantiles, agreement, drift,
prediction mean...) and the page draws the last `capacity` of them. Points are stored column-wise,
ready for a chart: `series(model)` returns `{version: {"t": [...], "<metric>": [...]}}` with None where
a metric had no value. Memory: `capacity` points per version, at most `max_versions` versions per model.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Mapping


class History:
    """Ring buffers of sampled metrics, per model and version. Thread-safe."""

    def __init__(self, *, capacity: int = 360, max_versions: int = 8) -> None:
        self.capacity = capacity
        self.max_versions = max_versions
        self._lock = threading.Lock()
        self._points: dict[str, OrderedDict[str, deque[tuple[float, dict[str, float | None]]]]] = {}

    def append(self, model: str, version: str, t: float, values: Mapping[str, float | None]) -> None:
        """Record `values` for the version at wall-clock time `t` (seconds since the epoch)."""
        with self._lock:
            versions = self._points.setdefault(model, OrderedDict())
            ring = versions.get(version)
            if ring is None:
                ring = versions[version] = deque(maxlen=self.capacity)
                while len(versions) > self.max_versions:
                    versions.popitem(last=False)
            versions.move_to_end(version)
            ring.append((t, dict(values)))

    def series(self, model: str) -> dict[str, dict[str, list[float | None]]]:
        """Column-wise points of every version of `model` (keys: "t" and every metric recorded)."""
        with self._lock:
            versions = {version: list(ring) for version, ring in self._points.get(model, {}).items()}
        out: dict[str, dict[str, list[float | None]]] = {}
        for version, points in versions.items():
            names = sorted({name for _, values in points for name in values})
            columns: dict[str, list[float | None]] = {"t": [t for t, _ in points]}
            for name in names:
                columns[name] = [values.get(name) for _, values in points]
            out[version] = columns
        return out

    def forget(self, model: str) -> None:
        with self._lock:
            self._points.pop(model, None)
