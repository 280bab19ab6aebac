"""Fleet figures from replicas' counts: distributions add, drift windows add under one reference.

Pure functions over `monitoring/snapshot.py`'s counts (no I/O): `merge_distributions` sums rows,
histogram buckets and class counts; `merge_drift` sums the current windows of the replicas whose
reference has the same fingerprint and computes PSI and JS on the sums, listing the others apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from modelserve.monitoring.drift import ColumnDrift, js_distance, psi
from modelserve.monitoring.histogram import ClassCounts
from modelserve.monitoring.snapshot import DistributionCounts, DriftCounts
from modelserve.monitoring.version import MonitorConfig


def merge_distributions(found: Iterable[DistributionCounts], edges: tuple[float, ...]) -> dict[str, Any]:
    """Summed prediction distribution, shaped like `Monitor.distribution` (histograms of other edges
    than `edges` are left out: they cannot add)."""
    rows = 0
    histograms: dict[str, tuple[np.ndarray, float]] = {}
    classes: dict[str, ClassCounts] = {}
    for part in found:
        rows += part.rows
        for column, (counts, total) in part.histograms.items():
            if len(counts) != len(edges) + 1:
                continue
            before = histograms.get(column, (np.zeros(len(edges) + 1, dtype=np.int64), 0.0))
            histograms[column] = (before[0] + np.asarray(counts, dtype=np.int64), before[1] + total)
        for output, named in part.classes.items():
            merged = classes.setdefault(output, ClassCounts())
            for name, count in named.items():
                merged.add_one(name, count)
    return {
        "rows": rows,
        "histograms": {
            column: {
                "edges": list(edges),
                "counts": counts.tolist(),
                "sum": total,
                "mean": total / int(counts.sum()) if counts.sum() else None,
            }
            for column, (counts, total) in histograms.items()
        },
        "classes": {output: dict(merged.counts) for output, merged in classes.items()},
    }


def merge_windows(found: Iterable[DistributionCounts]) -> dict[str, np.ndarray]:
    """Summed output bucket counts over the drift window, per column (columns of other shapes left out)."""
    sums: dict[str, np.ndarray] = {}
    for part in found:
        for column, counts in part.window.items():
            before = sums.get(column)
            if before is None:
                sums[column] = np.asarray(counts, dtype=np.int64)
            elif before.shape == (len(counts),):
                sums[column] = before + np.asarray(counts, dtype=np.int64)
    return sums


def merge_drift(
    found: list[tuple[str, DriftCounts]], config: MonitorConfig, *, prefer: str
) -> dict[str, Any]:
    """Drift over the summed windows of the replicas sharing one reference (this replica's, else the
    most common one); the others listed as not mergeable."""
    groups: dict[str, list[tuple[str, DriftCounts]]] = {}
    for replica, counts in found:
        groups.setdefault(counts.fingerprint, []).append((replica, counts))
    if not groups:
        return {"reference": None, "columns": [], "not_mergeable": []}
    own = next((c.fingerprint for r, c in found if r == prefer), None)
    chosen = own if own is not None else max(sorted(groups), key=lambda f: len(groups[f]))
    members = groups[chosen]
    first = members[0][1]
    current = np.zeros(
        (len(first.columns), len(first.reference[0]) if first.reference else 0), dtype=np.int64
    )
    for _, counts in members:
        current += np.asarray(counts.current, dtype=np.int64)
    drift = config.drift
    columns: list[ColumnDrift] = []
    for j, column in enumerate(first.columns):
        reference, window = np.asarray(first.reference[j]), current[j]
        samples = int(window.sum())
        value = psi(reference, window) if samples else None
        enough = samples >= drift.min_samples
        columns.append(
            ColumnDrift(
                column=column, psi=value, js=js_distance(reference, window) if samples else None,
                threshold=drift.threshold, samples=samples, reference_samples=first.reference_rows,
                drifted=(value is not None and value > drift.threshold) if enough else None,
            )
        )  # fmt: skip
    return {
        "reference": {  # shaped like one replica's reference state, with who shares it
            "state": "ready", "source": first.source, "rows": first.reference_rows, "fingerprint": chosen,
            "replicas": sorted(r for r, _ in members),
        },
        "columns": [c.to_dict() for c in sorted(columns, key=lambda c: -(c.psi or 0.0))],
        "not_mergeable": [
            {"replica": replica, "fingerprint": fingerprint, "source": counts.source}
            for fingerprint, group in sorted(groups.items()) if fingerprint != chosen
            for replica, counts in group
        ],
    }  # fmt: skip
