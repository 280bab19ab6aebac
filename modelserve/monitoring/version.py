"""What is monitored of one model version: its options, its output distributions, its drift trackers.

`VersionMonitor` holds, for one version, the output distribution of what it served (`outputs`) and of
what it predicted as a shadow (`shadow`), and the input and output drift trackers with their
references. Not thread-safe by itself: `Monitor` calls it under its lock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from modelserve.monitoring.columns import MAX_COLUMNS_PER_TENSOR, is_label_tensor, tensor_columns
from modelserve.monitoring.drift import DriftConfig, DriftTracker, Reference
from modelserve.monitoring.histogram import SCORE_EDGES, ClassCounts, ValueHistogram, WindowedCounts

#: Requests a second a process monitors per model by default: enough for drift and distributions
#: (a window of 300 s holds 300,000 rows), and a bounded cost however fast the model serves.
DEFAULT_MAX_RATE = 1000.0
#: Score columns per output with a histogram (a 1000-class output keeps its first ones).
MAX_SCORE_COLUMNS = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitorConfig:
    """Monitoring options of one model (the `[monitoring]` table of its config.toml)."""

    enabled: bool = True
    drift: DriftConfig = field(default_factory=DriftConfig)
    #: Keep one request in `sample_every` (1: all).
    sample_every: int = 1
    #: Requests a second monitored per model; past it a uniform sample of that many (0: all).
    max_rate: float = DEFAULT_MAX_RATE
    output_edges: tuple[float, ...] = SCORE_EDGES
    #: The output scored against posted labels (default: the first label output, else argmax/value).
    label_output: str | None = None
    max_columns: int = MAX_COLUMNS_PER_TENSOR


class OutputDistribution:
    """Cumulative and windowed distribution of one version's outputs."""

    def __init__(self, config: MonitorConfig) -> None:
        self.edges = config.output_edges
        self.histograms: dict[str, ValueHistogram] = {}
        self.classes: dict[str, ClassCounts] = {}
        self.window_columns: tuple[str, ...] | None = None
        self.window: WindowedCounts | None = None
        self.drift_window_s = config.drift.window_s
        self.sub_windows = config.drift.sub_windows

    def add(self, outputs: Mapping[str, np.ndarray], now: float) -> None:
        columns: list[tuple[str, np.ndarray]] = []
        for name, array in outputs.items():
            array = np.asarray(array)
            if array.ndim == 0 or array.dtype.kind not in "biufOSU":
                continue
            flat = array.reshape(array.shape[0], -1)
            if is_label_tensor(array):
                self.classes.setdefault(name, ClassCounts()).add(flat[:, 0])
                if array.dtype.kind in "biu":
                    columns.append((name, flat[:, 0]))
                continue
            for j in range(min(flat.shape[1], MAX_SCORE_COLUMNS)):
                column = name if flat.shape[1] == 1 else f"{name}[{j}]"
                self.histograms.setdefault(column, ValueHistogram(self.edges)).add(flat[:, j])
                columns.append((column, flat[:, j]))
        names = tuple(name for name, _ in columns)
        if self.window is None:
            self.window_columns = names
            self.window = WindowedCounts(
                (len(names), len(self.edges) + 1), window_s=self.drift_window_s, sub_windows=self.sub_windows
            )
        if names != self.window_columns:
            return
        edges = np.asarray(self.edges)
        counts = np.zeros((len(names), len(edges) + 1), dtype=np.int64)
        for j, (_, values) in enumerate(columns):
            values = np.asarray(values, dtype=np.float64)
            index = np.searchsorted(edges, values[~np.isnan(values)], side="left")
            counts[j] = np.bincount(index, minlength=len(edges) + 1)
        self.window.add(counts, now)

    def windowed(self, now: float) -> dict[str, np.ndarray]:
        if self.window is None or self.window_columns is None:
            return {}
        total = self.window.total(now)
        return {name: total[j] for j, name in enumerate(self.window_columns)}


class VersionMonitor:
    """Everything monitored for one model version."""

    def __init__(self, config: MonitorConfig, now: float) -> None:
        self.config = config
        self.created = now
        self.rows = 0
        self.outputs = OutputDistribution(config)
        #: Outputs of the version's shadow runs (None until it ran as a shadow), and their rows.
        self.shadow: OutputDistribution | None = None
        self.shadow_rows = 0
        self.input_drift: DriftTracker | None = None
        self.output_drift: DriftTracker | None = None
        self.pending_reference: tuple[Reference, Reference | None, str] | None = None

    def add(self, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray], now: float) -> None:
        max_columns = self.config.max_columns
        found_in = tensor_columns(inputs, max_per_tensor=max_columns)
        found_out = tensor_columns(outputs, max_per_tensor=max_columns)
        if found_in is not None:
            self.rows += found_in[1].shape[0]
        self.outputs.add(outputs, now)
        for kind, found in (("input", found_in), ("output", found_out)):
            if found is None:
                continue
            names, matrix = found
            tracker = self.input_drift if kind == "input" else self.output_drift
            if tracker is None:
                tracker = DriftTracker(names, self.config.drift, now=now)
                if kind == "input":
                    self.input_drift = tracker
                else:
                    self.output_drift = tracker
                self._apply_pending_reference()
            if tracker.columns == names:
                tracker.add(matrix, now)

    def add_shadow(self, outputs: Mapping[str, np.ndarray], now: float) -> None:
        if self.shadow is None:
            self.shadow = OutputDistribution(self.config)
        self.shadow_rows += next((int(np.shape(a)[0]) for a in outputs.values() if np.ndim(a)), 0)
        self.shadow.add(outputs, now)

    def distribution(self, role: str) -> OutputDistribution | None:
        """The outputs counted for `role` ("primary" or "shadow"), None when it never had that role."""
        return self.outputs if role == "primary" else self.shadow

    def set_reference(self, inputs: Reference, outputs: Reference | None, source: str) -> None:
        """Use these references (from a file, or another version's) instead of capturing live traffic."""
        self.pending_reference = (inputs, outputs, source)
        self._apply_pending_reference()

    def _apply_pending_reference(self) -> None:
        """Hand the pending references to the trackers that exist (each once), until both have theirs."""
        if self.pending_reference is None:
            return
        inputs, outputs, source = self.pending_reference
        done = True
        for tracker, reference in ((self.input_drift, inputs), (self.output_drift, outputs)):
            if reference is None or (tracker is not None and tracker.reference is reference):
                continue
            if tracker is None:
                done = False
            elif tracker.columns == reference.columns:
                tracker.set_reference(reference, source)
        if done:
            self.pending_reference = None
