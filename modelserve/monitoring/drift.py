"""Data drift: a reference distribution per model version, current windows compared to it by PSI and JS.

Each monitored column (one input feature or one output value) gets bins from its reference: the
interior deciles of the reference values (`bins` - 1 edges, `method="lower"` so edges are sample
values, duplicates removed: a discrete feature gets one bin per value), plus one bin for NaN. A
value `x` falls in bin `searchsorted(edges, x, side="right")`. Current traffic is counted into the
same bins over a sliding window (`WindowedCounts`), so memory per column is `bins + 1` integers per
sub-window however many distinct values arrive.

Population stability index, over bin proportions `p` (reference) and `q` (current), each floored at
`floor` (1e-4) so an empty bin stays finite::

    PSI = sum_i (q_i - p_i) * ln(q_i / p_i)

Jensen-Shannon distance (base 2, in [0, 1], unfloored) is reported beside it: it equals
`scipy.spatial.distance.jensenshannon(p, q, base=2)`. Rules of thumb for PSI: below 0.1 no change,
0.1-0.25 a moderate shift, above 0.25 a major one. The default alarm threshold is 0.2 with at least
`min_samples` current rows: under no drift PSI is about `(bins - 1) * (1/n + 1/n_ref)` (a scaled
chi-square), which for 10 bins, 500 current and 1,000 reference rows is 0.03, and its 99.9th
percentile about 0.08; a window with fewer rows is "not enough data" (`drifted` is None), never a pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from modelserve.monitoring.histogram import WindowedCounts

DEFAULT_BINS = 10
PSI_THRESHOLD = 0.2
PROPORTION_FLOOR = 1e-4


def quantile_edges(values: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """Interior quantile edges of the finite `values` (at most `bins` - 1, strictly increasing)."""
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return np.zeros(0)
    return np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)[1:-1], method="lower"))


def bin_counts(edges: np.ndarray, values: np.ndarray, width: int) -> np.ndarray:
    """Counts of `values` in the bins of `edges` (last of `width` entries: NaN)."""
    values = np.asarray(values, dtype=np.float64)
    index = np.searchsorted(edges, values, side="right")
    index[np.isnan(values)] = width - 1
    return np.bincount(index, minlength=width)


def proportions(counts: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """`counts` as proportions, each raised to at least `floor`."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    shares = counts / total if total > 0 else np.zeros_like(counts)
    return np.maximum(shares, floor) if floor > 0 else shares


def psi(reference: np.ndarray, current: np.ndarray, *, floor: float = PROPORTION_FLOOR) -> float:
    """Population stability index of `current` against `reference` (two count arrays, same bins)."""
    p, q = proportions(reference, floor), proportions(current, floor)
    return float(np.sum((q - p) * np.log(q / p)))


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2) between two count arrays over the same bins."""
    p, q = proportions(reference), proportions(current)
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        mask = a > 0
        return float(np.sum(a[mask] * np.log2(a[mask] / m[mask])))

    return math.sqrt(max((kl(p) + kl(q)) / 2, 0.0))


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftConfig:
    """How drift is measured for one model (the `[monitoring]` table of its config.toml)."""

    bins: int = DEFAULT_BINS
    threshold: float = PSI_THRESHOLD
    min_samples: int = 500
    window_s: float = 300.0
    sub_windows: int = 10
    #: A live reference is a uniform sample (at most `reference_rows`) of the traffic of its first
    #: `reference_period_s` (longer if fewer than `min_samples` rows came by then).
    reference_rows: int = 2000
    reference_period_s: float = 600.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ColumnDrift:
    """One column's drift over the current window; `drifted` is None when there is not enough data."""

    column: str
    psi: float | None
    js: float | None
    threshold: float
    samples: int
    reference_samples: int
    drifted: bool | None

    def to_dict(self) -> dict[str, object]:
        return {
            "column": self.column,
            "psi": self.psi,
            "js": self.js,
            "threshold": self.threshold,
            "samples": self.samples,
            "reference_samples": self.reference_samples,
            "drifted": self.drifted,
        }


class Reference:
    """Frozen reference bins and counts for a fixed list of columns."""

    __slots__ = ("columns", "counts", "edges", "rows", "width")

    def __init__(self, columns: Sequence[str], matrix: np.ndarray, bins: int = DEFAULT_BINS) -> None:
        matrix = np.asarray(matrix, dtype=np.float64)
        if matrix.ndim != 2 or matrix.shape[1] != len(columns):
            raise ValueError(f"reference rows must be a 2-D array with {len(columns)} columns")
        self.columns = tuple(columns)
        self.width = bins + 1
        self.rows = int(matrix.shape[0])
        self.edges = [quantile_edges(matrix[:, j], bins) for j in range(matrix.shape[1])]
        self.counts = self.count(matrix)

    def count(self, matrix: np.ndarray) -> np.ndarray:
        """Bin counts of `matrix` (rows x columns) per column: a (columns x width) array."""
        out = np.zeros((len(self.columns), self.width), dtype=np.int64)
        for j, edges in enumerate(self.edges):
            out[j] = bin_counts(edges, matrix[:, j], self.width)
        return out


class ReferenceCapture:
    """A uniform reservoir of live rows (Algorithm R, vectorised) until it is time to freeze a reference."""

    def __init__(self, columns: Sequence[str], *, size: int, started: float, seed: int = 0) -> None:
        self.columns = tuple(columns)
        self.reservoir = np.zeros((size, len(self.columns)), dtype=np.float64)
        self.seen = 0
        self.started = started
        self._rng = np.random.default_rng(seed)

    def add(self, matrix: np.ndarray) -> None:
        size = self.reservoir.shape[0]
        rows = matrix.shape[0]
        room = max(0, min(size - self.seen, rows))
        if room:
            self.reservoir[self.seen : self.seen + room] = matrix[:room]
        if rows > room:  # row t (0-based over the stream) replaces slot r ~ U[0, t] when r < size
            positions = np.arange(self.seen + room, self.seen + rows)
            slots = self._rng.integers(0, positions + 1)
            keep = slots < size
            self.reservoir[slots[keep]] = matrix[room:][keep]
        self.seen += rows

    def sample(self) -> np.ndarray:
        return self.reservoir[: min(self.seen, self.reservoir.shape[0])]


class DriftTracker:
    """Drift of one model version's columns: captures (or is given) a reference, then windows against it."""

    def __init__(self, columns: Sequence[str], config: DriftConfig, *, now: float) -> None:
        self.columns = tuple(columns)
        self.config = config
        self.reference: Reference | None = None
        self.reference_source = "live"
        self.capture: ReferenceCapture | None = ReferenceCapture(
            self.columns, size=config.reference_rows, started=now
        )
        self.window: WindowedCounts | None = None

    def set_reference(self, reference: Reference, source: str) -> None:
        """Use `reference` (same columns) from now on; the current window starts empty."""
        if reference.columns != self.columns:
            raise ValueError("the reference's columns differ from the tracked ones")
        self.reference, self.reference_source, self.capture = reference, source, None
        config = self.config
        self.window = WindowedCounts(
            (len(self.columns), reference.width), window_s=config.window_s, sub_windows=config.sub_windows
        )

    def add(self, matrix: np.ndarray, now: float) -> None:
        """Count a batch of rows (rows x columns, float64) seen at time `now`."""
        if self.reference is not None and self.window is not None:
            self.window.add(self.reference.count(matrix), now)
            return
        capture = self.capture
        if capture is None:
            return
        config = self.config
        capture.add(matrix)
        if now - capture.started >= config.reference_period_s and capture.seen >= config.min_samples:
            self.set_reference(Reference(self.columns, capture.sample(), config.bins), "live")

    def report(self, now: float) -> list[ColumnDrift]:
        """Every column's drift over the window ending at `now` (empty while the reference is captured)."""
        reference, window = self.reference, self.window
        if reference is None or window is None:
            return []
        config = self.config
        current = window.total(now)
        results = []
        for j, column in enumerate(self.columns):
            samples = int(current[j].sum())
            enough = samples >= config.min_samples
            value = psi(reference.counts[j], current[j]) if samples else None
            results.append(
                ColumnDrift(
                    column=column,
                    psi=value,
                    js=js_distance(reference.counts[j], current[j]) if samples else None,
                    threshold=config.threshold,
                    samples=samples,
                    reference_samples=reference.rows,
                    drifted=(value is not None and value > config.threshold) if enough else None,
                )
            )
        return results


def compare_windows(
    base: Mapping[str, np.ndarray], other: Mapping[str, np.ndarray], config: DriftConfig
) -> list[ColumnDrift]:
    """PSI and JS of `other`'s bucket counts against `base`'s, per column both have (candidate vs
    live outputs); `drifted` is None until both have `min_samples` rows."""
    results = []
    for column, counts in base.items():
        if column not in other:
            continue
        samples, base_samples = int(other[column].sum()), int(counts.sum())
        enough = min(samples, base_samples) >= config.min_samples
        value = psi(counts, other[column]) if samples and base_samples else None
        results.append(
            ColumnDrift(
                column=column,
                psi=value,
                js=js_distance(counts, other[column]) if samples and base_samples else None,
                threshold=config.threshold,
                samples=samples,
                reference_samples=base_samples,
                drifted=(value is not None and value > config.threshold) if enough else None,
            )
        )
    return results
