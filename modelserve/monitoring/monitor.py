"""`Monitor`: prediction distributions and drift per model version, fed in batches off the hot path.

The request path only calls `submit`: a bounded append of references to the request's arrays (no
numpy work, no allocation), but for a large request, whose counted rows and columns are copied so its
body and onnxruntime's buffers are not held; `flush`, run by a periodic task and before every read,
concatenates what is pending per version and counts it in one vectorised pass. When more than
`max_pending` requests, or `MAX_PENDING_BYTES` of tensors, wait, new ones are dropped and counted
(`dropped`), so memory stays bounded under any load. Past `max_rate` requests a second per model, a
uniform one in k is monitored (k from the second before), so the cost a second is bounded however
fast the model serves; `sample_every` = k keeps one request in k at any rate. A large request of
more than `MAX_ROWS_PER_REQUEST` rows counts that many of them, evenly spaced.

A shadow version's outputs (`submit_shadow`, from the shadow pool's threads) are counted apart, as
the version's role "shadow" distribution: what the candidate would have predicted on live traffic.

Per (model, version), everything is bounded: output histograms with fixed edges, class counts capped,
drift trackers with `bins + 1` counters per column and sub-window, a capped number of columns per
tensor, and at most `max_versions` versions per model (the least recently fed is forgotten).
Thread-safe: one lock guards all state, so a metrics collector may read from another thread.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

import numpy as np

from modelserve.monitoring.columns import tensor_columns
from modelserve.monitoring.drift import ColumnDrift, Reference, compare_windows
from modelserve.monitoring.histogram import ValueHistogram
from modelserve.monitoring.snapshot import DistributionCounts, DriftCounts, distribution_counts, drift_counts
from modelserve.monitoring.version import MonitorConfig, OutputDistribution, VersionMonitor

__all__ = ["Monitor", "MonitorConfig"]

#: Rows of one request that are counted: a larger batch counts evenly spaced rows, so one huge
#: request costs a bounded flush (counting holds the GIL while the event loop waits).
MAX_ROWS_PER_REQUEST = 4096
#: A request whose tensors are larger is queued as what is counted of it, copied (`_retained`).
LARGE_REQUEST_BYTES = 64 * 2**10
#: Bytes of queued tensors past which new requests are dropped (and counted) until the next flush.
MAX_PENDING_BYTES = 64 * 2**20


def _retained(tensors: Mapping[str, np.ndarray], max_columns: int) -> dict[str, np.ndarray]:
    """What counting reads of a large request's tensors, copied.

    A view would keep the request's body, or onnxruntime's output buffer, alive until the flush. A
    tensor keeps its first `max_columns` columns (per row, flattened) and, past
    `MAX_ROWS_PER_REQUEST` rows, evenly spaced rows: all that is counted. A scalar, or a tensor whose
    rows differ from the first one's, is never counted: it is left out.
    """
    retained = {}
    rows = -1
    for name, value in tensors.items():
        if not value.ndim or rows not in (-1, value.shape[0]):
            continue
        rows = value.shape[0]
        if value.ndim > 2 or (value.ndim == 2 and value.shape[1] > max_columns):
            value = value.reshape(rows, -1)[:, :max_columns]
        retained[name] = value[:: -(-rows // MAX_ROWS_PER_REQUEST)].copy()
    return retained


def _size(tensors: Mapping[str, np.ndarray]) -> int:
    size = 0
    for value in tensors.values():
        size += value.nbytes
    return size


Tensors = Mapping[str, np.ndarray]


class _Queued:
    """One version's requests waiting for a flush, and the time of the last one."""

    __slots__ = ("inputs", "outputs", "stamp")

    def __init__(self) -> None:
        self.inputs: list[Tensors] = []
        self.outputs: list[Tensors] = []
        self.stamp = 0.0

    def concatenated(self) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
        """The requests as few batches as their tensors allow: one per set of tensor names (requests
        may ask for some outputs only), request by request where shapes do not concatenate."""
        inputs, outputs = self.inputs, self.outputs
        # The common case in C loops: as many names everywhere, and each request has the first's.
        if len(set(map(len, inputs))) == 1 and len(set(map(len, outputs))) == 1:
            with contextlib.suppress(KeyError):
                return _concatenated_or_each(inputs, outputs)
        by_names: dict[tuple[Any, ...], tuple[list[Tensors], list[Tensors]]] = {}
        for i, o in zip(inputs, outputs, strict=True):
            group = by_names.setdefault((*i, "", *o), ([], []))
            group[0].append(i)
            group[1].append(o)
        return [batch for group in by_names.values() for batch in _concatenated_or_each(*group)]


def _concatenated_or_each(
    inputs: list[Tensors], outputs: list[Tensors]
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """One batch of the requests (same tensor names), or one per request if their shapes differ."""
    try:
        return [(_concatenate(inputs), _concatenate(outputs))]
    except ValueError:
        return [(dict(i), dict(o)) for i, o in zip(inputs, outputs, strict=True)]


class _Sampling:
    """Which of a model's requests are monitored: one in `sample_every`, and past `max_rate` requests a
    second a uniform one in k, k set each second from the rate of the second before."""

    __slots__ = ("every", "max_rate", "sample_every", "second_end", "seen", "skipped", "started")

    def __init__(self, sample_every: int, max_rate: float, now: float) -> None:
        self.sample_every = self.every = sample_every
        self.max_rate = max_rate
        self.seen = self.skipped = 0
        self.started, self.second_end = now, now + 1.0

    def next_second(self, now: float) -> None:
        elapsed = now - self.started
        rate = self.seen / elapsed if elapsed > 0 else 0.0
        over = math.ceil(rate / self.max_rate) if self.max_rate > 0 else 1
        self.every = max(self.sample_every, over)
        self.seen = 0
        self.started, self.second_end = now, now + 1.0


class Monitor:
    """Prediction distributions and drift for every model version, plus drift alarm counts."""

    def __init__(
        self,
        *,
        config_for: Callable[[str], MonitorConfig] | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_pending: int = 4096,
        max_versions: int = 8,
    ) -> None:
        self.config_for = config_for if config_for is not None else (lambda model: MonitorConfig())
        self.clock = clock
        self.max_pending = max_pending
        self.max_versions = max_versions
        self.dropped = 0
        self.skipped = 0  # batches whose tensors could not be concatenated (shapes changed)
        #: Queued requests by model and version. Only lists of the request's own dicts, which hold
        #: arrays alone: the garbage collector does not track them, so queueing thousands of requests
        #: between flushes adds no collections (a tuple per request did: a full one every few seconds).
        self._pending: dict[str, dict[str, _Queued]] = {}
        self._queued = 0
        self._queued_bytes = 0
        #: Shadow outputs, appended from the shadow pool's threads (a deque: thread-safe appends).
        self._shadow_pending: deque[tuple[str, str, Mapping[str, np.ndarray], float]] = deque()
        self._lock = threading.Lock()
        self._versions: dict[str, OrderedDict[str, VersionMonitor]] = {}
        self._drifted: dict[tuple[str, str, str, str], bool] = {}
        #: Drift alarms by (model, version, kind, column): times a column went above its threshold.
        self.alarms: dict[tuple[str, str, str, str], int] = {}
        self._sampling: dict[str, _Sampling] = {}

    # -- hot path --------------------------------------------------------------------------------

    def submit(
        self, model: str, version: str, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        """Queue one request's inputs and outputs (counted at the next `flush`)."""
        if self._queued >= self.max_pending:
            self.dropped += 1
            return
        now = self.clock()
        sampling = self._sampling.get(model)
        if sampling is None:
            config = self.config_for(model)
            sampling = self._sampling[model] = _Sampling(config.sample_every, config.max_rate, now)
        if now >= sampling.second_end:
            sampling.next_second(now)
        sampling.seen += 1
        if sampling.every > 1 and sampling.seen % sampling.every:
            sampling.skipped += 1
            return
        size = _size(inputs) + _size(outputs)
        if size > LARGE_REQUEST_BYTES:
            max_columns = self.config_for(model).max_columns
            inputs, outputs = _retained(inputs, max_columns), _retained(outputs, max_columns)
            size = _size(inputs) + _size(outputs)
        if self._queued_bytes + size > MAX_PENDING_BYTES:
            self.dropped += 1
            return
        self._queued_bytes += size
        versions = self._pending.get(model)
        if versions is None:
            versions = self._pending[model] = {}
        queued = versions.get(version)
        if queued is None:
            queued = versions[version] = _Queued()
        queued.inputs.append(inputs)
        queued.outputs.append(outputs)
        queued.stamp = now
        self._queued += 1

    def sampling(self, model: str) -> dict[str, int]:
        """How the model's requests are sampled now: one in `every`, and how many were left out."""
        sampling = self._sampling.get(model)
        if sampling is None:
            return {"every": 1, "skipped": 0}
        return {"every": sampling.every, "skipped": sampling.skipped}

    def sampled_out(self) -> dict[str, int]:
        """Requests left out by sampling, per model (metrics exposition)."""
        return {model: sampling.skipped for model, sampling in list(self._sampling.items())}

    def has_pending(self) -> bool:
        """Whether anything waits to be counted (a flush with nothing to do is skipped)."""
        return bool(self._queued or self._shadow_pending)

    def submit_shadow(self, model: str, version: str, outputs: Mapping[str, np.ndarray]) -> None:
        """Queue a shadow run's outputs (any thread; counted at the next `flush`)."""
        if len(self._shadow_pending) >= self.max_pending:
            self.dropped += 1
            return
        if _size(outputs) > LARGE_REQUEST_BYTES:
            outputs = _retained(outputs, self.config_for(model).max_columns)
        self._shadow_pending.append((model, version, outputs, self.clock()))

    # -- batch work ------------------------------------------------------------------------------

    def flush(self) -> int:
        """Count everything pending; returns how many requests were counted."""
        with self._lock:
            pending, queued = self._pending, self._queued
            self._pending, self._queued, self._queued_bytes = {}, 0, 0
            shadows = self._flush_shadows()
            if not pending:
                return shadows
            for model, versions in pending.items():
                for version, batch in versions.items():
                    monitor = self._version(model, version, create=True)
                    for inputs, outputs in batch.concatenated():
                        if _consistent(inputs) and _consistent(outputs):
                            monitor.add(inputs, outputs, batch.stamp)
                        else:
                            self.skipped += 1
            self._update_alarms()
            return queued + shadows

    def _flush_shadows(self) -> int:
        """Count the queued shadow outputs, concatenated per version (call with the lock held)."""
        queued = self._shadow_pending
        groups: dict[tuple[Any, ...], list[Tensors]] = {}
        stamps: dict[tuple[Any, ...], float] = {}
        count = 0
        for _ in range(len(queued)):  # only what is queued now: appends may go on meanwhile
            model, version, outputs, stamp = queued.popleft()
            key = (model, version, *outputs)
            groups.setdefault(key, []).append(outputs)
            stamps[key] = stamp
            count += 1
        for key, items in groups.items():
            monitor = self._version(key[0], key[1], create=True)
            try:
                batches = [_concatenate(items)]
            except ValueError:
                batches = [dict(o) for o in items]
            for outputs in batches:
                if _consistent(outputs):
                    monitor.add_shadow(outputs, stamps[key])
                else:
                    self.skipped += 1
        return count

    def _version(self, model: str, version: str, *, create: bool = False) -> VersionMonitor:
        versions = self._versions.setdefault(model, OrderedDict())
        monitor = versions.get(version)
        if monitor is None:
            if not create:
                raise KeyError(version)
            config = self.config_for(model)
            monitor = versions[version] = VersionMonitor(config, self.clock())
            while len(versions) > self.max_versions:
                versions.popitem(last=False)
        versions.move_to_end(version)
        return monitor

    def _lookup(self, model: str, version: str) -> VersionMonitor | None:
        versions = self._versions.get(model)
        return versions.get(version) if versions is not None else None

    def _update_alarms(self) -> None:
        now = self.clock()
        for model, versions in self._versions.items():
            for version, monitor in versions.items():
                for kind, tracker in (("input", monitor.input_drift), ("output", monitor.output_drift)):
                    if tracker is None:
                        continue
                    for result in tracker.report(now):
                        key = (model, version, kind, result.column)
                        drifted = bool(result.drifted)
                        if drifted and not self._drifted.get(key, False):
                            self.alarms[key] = self.alarms.get(key, 0) + 1
                        self._drifted[key] = drifted

    # -- references ------------------------------------------------------------------------------

    def set_reference(
        self,
        model: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Mapping[str, np.ndarray] | None = None,
        *,
        source: str,
    ) -> None:
        """Use these rows (e.g. loaded from a JSONL file) as the version's drift reference."""
        config = self.config_for(model)
        found_in = tensor_columns(inputs, max_per_tensor=config.max_columns)
        if found_in is None:
            raise ValueError("the reference has no numeric input")
        reference_in = Reference(found_in[0], found_in[1], config.drift.bins)
        reference_out = None
        if outputs is not None:
            found_out = tensor_columns(outputs, max_per_tensor=config.max_columns)
            if found_out is not None:
                reference_out = Reference(found_out[0], found_out[1], config.drift.bins)
        with self._lock:
            self._version(model, version, create=True).set_reference(reference_in, reference_out, source)

    # -- reads -----------------------------------------------------------------------------------

    def versions(self, model: str) -> list[str]:
        with self._lock:
            return list(self._versions.get(model, ()))

    def models(self) -> list[str]:
        with self._lock:
            return list(self._versions)

    def drift(self, model: str, version: str) -> dict[str, Any]:
        """The version's drift report: reference state and every column's drift, inputs and outputs."""
        self.flush()
        with self._lock:
            monitor = self._lookup(model, version)
            if monitor is None:
                return {"reference": None, "inputs": [], "outputs": []}
            now = self.clock()
            report: dict[str, Any] = {"reference": _reference_state(monitor)}
            for kind, tracker in (("inputs", monitor.input_drift), ("outputs", monitor.output_drift)):
                report[kind] = tracker.report(now) if tracker is not None else []
            return report

    def drift_results(self, model: str, version: str) -> list[tuple[str, ColumnDrift]]:
        """`(kind, result)` for every column of the version ("input" or "output")."""
        report = self.drift(model, version)
        return [("input", r) for r in report["inputs"]] + [("output", r) for r in report["outputs"]]

    def distribution(self, model: str, version: str, role: str = "primary") -> dict[str, Any]:
        """Cumulative prediction distribution of the version as `role` ("primary" or "shadow"):
        histograms of score columns, class counts of labels."""
        self.flush()
        with self._lock:
            monitor = self._lookup(model, version)
            outputs = monitor.distribution(role) if monitor is not None else None
            if monitor is None or outputs is None:
                return {"histograms": {}, "classes": {}, "rows": 0}
            return {
                "rows": monitor.rows if role == "primary" else monitor.shadow_rows,
                "histograms": {
                    name: {
                        "edges": [float(e) for e in hist.edges],
                        "counts": hist.counts.tolist(),
                        "sum": hist.total,
                        "mean": hist.mean(),
                    }
                    for name, hist in outputs.histograms.items()
                },
                "classes": {name: dict(counts.counts) for name, counts in outputs.classes.items()},
            }

    def _roles(self) -> list[tuple[str, str, str, OutputDistribution]]:
        return [
            (model, version, role, outputs)
            for model, versions in self._versions.items()
            for version, monitor in versions.items()
            for role in ("primary", "shadow")
            if (outputs := monitor.distribution(role)) is not None
        ]

    def histograms(self) -> list[tuple[str, str, str, str, ValueHistogram]]:
        """`(model, version, role, column, histogram)` for every score column (metrics exposition)."""
        with self._lock:
            return [
                (model, version, role, column, hist)
                for model, version, role, outputs in self._roles()
                for column, hist in outputs.histograms.items()
            ]

    def class_counts(self) -> list[tuple[str, str, str, str, dict[str, int]]]:
        """`(model, version, role, output, counts by class)` for every label output."""
        with self._lock:
            return [
                (model, version, role, output, dict(counts.counts))
                for model, version, role, outputs in self._roles()
                for output, counts in outputs.classes.items()
            ]

    def windowed_outputs(
        self, model: str, version: str, *, scores_only: bool = False, role: str = "primary"
    ) -> dict[str, np.ndarray]:
        """The version's output bucket counts (output edges) over the drift window, per output column."""
        with self._lock:
            monitor = self._lookup(model, version)
            outputs = monitor.distribution(role) if monitor is not None else None
            if outputs is None:
                return {}
            found = outputs.windowed(self.clock())
            return {k: v for k, v in found.items() if k in outputs.histograms} if scores_only else found

    def output_shift(self, model: str, live: str, candidate: str) -> list[ColumnDrift]:
        """PSI of the candidate's current output distribution against the live version's, per column."""
        self.flush()
        with self._lock:
            versions: Mapping[str, VersionMonitor] = self._versions.get(model, {})
            if live not in versions or candidate not in versions:
                return []
            now = self.clock()
            base = versions[live].outputs.windowed(now)
            other = versions[candidate].outputs.windowed(now)
            shadow = versions[candidate].shadow
            if shadow is not None and not any(counts.sum() for counts in other.values()):
                other = shadow.windowed(now)  # a shadow-only candidate: what it predicted on the same traffic
            config = self.config_for(model).drift
        return compare_windows(base, other, config)

    def export_counts(self) -> tuple[list[DistributionCounts], list[DriftCounts]]:
        """Every version's distributions and drift windows as mergeable counts (the fleet snapshot)."""
        self.flush()
        with self._lock:
            now = self.clock()
            found = [
                (m, v, monitor) for m, versions in self._versions.items() for v, monitor in versions.items()
            ]
            distributions = [
                distribution_counts(m, v, role, monitor, now)
                for m, v, monitor in found
                for role in ("primary", "shadow")
            ]
            drift = [
                drift_counts(m, v, kind, tracker, now)
                for m, v, monitor in found
                for kind, tracker in (("inputs", monitor.input_drift), ("outputs", monitor.output_drift))
            ]
        return [d for d in distributions if d is not None], [d for d in drift if d is not None]

    def forget(self, model: str, version: str | None = None) -> None:
        with self._lock:
            versions = self._versions.get(model)
            if versions is None:
                return
            if version is None:
                del self._versions[model]
            else:
                versions.pop(version, None)


def _consistent(tensors: Mapping[str, np.ndarray]) -> bool:
    """Whether every tensor has the same number of rows (what column extraction needs)."""
    rows = {np.shape(array)[0] if np.ndim(array) else -1 for array in tensors.values()}
    return len(rows) <= 1 and -1 not in rows


def _concatenate(batches: list[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if len(batches) == 1:
        return dict(batches[0])
    return {name: np.concatenate(list(map(itemgetter(name), batches))) for name in batches[0]}


def _reference_state(monitor: VersionMonitor) -> dict[str, Any]:
    tracker = monitor.input_drift
    if tracker is None:
        return {"state": "waiting", "source": None, "rows": 0}
    if tracker.reference is not None:
        return {"state": "ready", "source": tracker.reference_source, "rows": tracker.reference.rows}
    seen = tracker.capture.seen if tracker.capture is not None else 0
    return {
        "state": "capturing",
        "source": "live",
        "rows": seen,
        "target_rows": tracker.config.reference_rows,
    }
