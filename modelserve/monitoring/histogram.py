"""Bounded, mergeable counts: value histograms with fixed edges, class shares, and sliding windows of both.

Everything here has a size fixed at construction (or capped), so memory does not grow with traffic or
with the number of distinct values seen, and two instances with the same shape merge by adding
counts (replicas, sub-windows). Values are counted in batches with numpy: one `searchsorted` and one
`bincount` per column, never a Python loop over rows.

Bucket convention is Prometheus's: bucket `i` counts values `<= edges[i]` (and above the edge before);
the last bucket counts values above the last edge (`+Inf`). NaN values are counted apart.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Default edges for scores and probabilities: 0.05 steps on [0, 1], a few decades either side.
SCORE_EDGES: tuple[float, ...] = (
    -1000.0, -100.0, -10.0, -1.0, 0.0,
    *(round(0.05 * i, 2) for i in range(1, 21)),
    10.0, 100.0, 1000.0,
)  # fmt: skip

#: Distinct classes counted per output; further classes count under OTHER_CLASS.
MAX_CLASSES = 32
OTHER_CLASS = "__other__"


class ValueHistogram:
    """Counts of values in fixed buckets (Prometheus `le` convention), with their sum and NaN count."""

    __slots__ = ("counts", "edges", "nan", "total")

    def __init__(self, edges: Sequence[float] = SCORE_EDGES) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        if self.edges.ndim != 1 or self.edges.size == 0 or np.any(np.diff(self.edges) <= 0):
            raise ValueError("histogram edges must be a non-empty, strictly increasing sequence")
        self.counts = np.zeros(self.edges.size + 1, dtype=np.int64)
        self.total = 0.0  # sum of the finite values counted
        self.nan = 0

    @property
    def count(self) -> int:
        """Values counted in buckets (NaN excluded)."""
        return int(self.counts.sum())

    def add(self, values: np.ndarray) -> None:
        """Count every value of the 1-D array `values`."""
        values = np.asarray(values, dtype=np.float64).ravel()
        finite = ~np.isnan(values)
        if not finite.all():
            self.nan += int(values.size - finite.sum())
            values = values[finite]
        if values.size == 0:
            return
        index = np.searchsorted(self.edges, values, side="left")
        self.counts += np.bincount(index, minlength=self.counts.size)
        with np.errstate(invalid="ignore", over="ignore"):
            self.total += float(values[np.isfinite(values)].sum())

    def merge(self, other: ValueHistogram) -> None:
        """Add `other`'s counts (same edges) into this histogram."""
        if not np.array_equal(self.edges, other.edges):
            raise ValueError("histograms with different edges do not merge")
        self.counts += other.counts
        self.total += other.total
        self.nan += other.nan

    def mean(self) -> float | None:
        """Mean of the finite values counted, or None when there were none."""
        count = self.count
        return self.total / count if count else None


class ClassCounts:
    """How often each class (label value) was predicted; at most `max_classes` distinct names."""

    __slots__ = ("counts", "max_classes")

    def __init__(self, max_classes: int = MAX_CLASSES) -> None:
        self.counts: dict[str, int] = {}
        self.max_classes = max_classes

    def add(self, values: np.ndarray) -> None:
        """Count every label in `values` (integers, booleans or strings)."""
        labels, counts = np.unique(np.asarray(values).ravel(), return_counts=True)
        for label, count in zip(labels.tolist(), counts.tolist(), strict=True):
            self.add_one(_class_name(label), int(count))

    def add_one(self, name: str, count: int = 1) -> None:
        """Count class `name` `count` times (as OTHER_CLASS once the cap is reached)."""
        mine = self.counts
        if name not in mine and len(mine) >= self.max_classes:
            name = OTHER_CLASS
        mine[name] = mine.get(name, 0) + count

    def merge(self, other: ClassCounts) -> None:
        for name, count in other.counts.items():
            self.add_one(name, count)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def shares(self) -> dict[str, float]:
        """Each class's share of the predictions counted (empty when none were)."""
        total = self.count
        return {name: count / total for name, count in sorted(self.counts.items())} if total else {}


def _class_name(label: object) -> str:
    if isinstance(label, bytes):
        return label.decode("utf-8", "replace")
    if isinstance(label, float) and label.is_integer():
        return str(int(label))
    return str(label)


class WindowedCounts:
    """Counts of a fixed shape over a sliding time window: a ring of sub-windows, summed on demand.

    A sub-window is cleared when the clock comes round to it again, so memory is `sub_windows + 1`
    arrays of `shape` however long it runs. `total(now)` covers at least `window_s` and at most
    `window_s + sub_window_s` (the partial current sub-window plus the full ones before it).
    """

    __slots__ = ("counts", "epochs", "sub_window_s", "window_s")

    def __init__(self, shape: tuple[int, ...], *, window_s: float = 60.0, sub_windows: int = 6) -> None:
        if window_s <= 0 or sub_windows < 1:
            raise ValueError("window_s must be positive and sub_windows at least 1")
        self.window_s = window_s
        self.sub_window_s = window_s / sub_windows
        self.counts = np.zeros((sub_windows + 1, *shape), dtype=np.int64)
        self.epochs = np.full(sub_windows + 1, -1, dtype=np.int64)

    def _slot(self, now: float) -> int:
        epoch = int(now // self.sub_window_s)
        slot = epoch % self.epochs.size
        if self.epochs[slot] != epoch:
            self.epochs[slot] = epoch
            self.counts[slot] = 0
        return slot

    def add(self, counts: np.ndarray, now: float) -> None:
        """Add `counts` (of the window's shape) to the sub-window of time `now` (seconds, any clock)."""
        self.counts[self._slot(now)] += counts

    def total(self, now: float) -> np.ndarray:
        """The counts of the window ending at `now`."""
        epoch = int(now // self.sub_window_s)
        live = (self.epochs >= epoch - (self.epochs.size - 1)) & (self.epochs <= epoch)
        return np.asarray(self.counts[live].sum(axis=0), dtype=np.int64)
