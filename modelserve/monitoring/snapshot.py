"""One replica's monitoring as mergeable counts: what it publishes for the fleet view.

A `MonitoringSnapshot` holds only additive numbers, so the fleet's figures are sums:

- `DistributionCounts` per (model, version, role): rows, score histograms (fixed edges: bucket counts
  and the sum of values) and class counts;
- `DriftCounts` per (model, version, kind): the reference's bin counts and the current window's, with
  the reference's `fingerprint` (a hash of its source, columns, bin edges and counts): two replicas'
  windows add up only under the same fingerprint (the same file reference);
- `OutcomeCounts` per (model, version): labelled rows and those predicted right, overall;
- `OutcomeSlots` per (model, version, role or "paired:<shadow>"): the same counts per 10 s slot of
  wall time, what the accuracy gate sums since a rollout began;
- `DisagreementTotals` per (model, primary, shadow): labelled rows where the two predicted other
  classes, and which one was right.

Sizes are bounded by what the monitor keeps: 8 versions per model, 32 classes, capped columns,
`bins + 1` counts per column, 8640 slots per series. `from_json` checks every field and returns None
for a body it cannot read (a snapshot of another release, or damaged): it is left out, never raised.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelserve.monitoring.drift import DriftTracker
from modelserve.monitoring.version import OutputDistribution, VersionMonitor

Counts = tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class DistributionCounts:
    """What one version predicted in one role: rows, score histograms `(bucket counts, sum)`, classes,
    and per output column its bucket counts over the drift window (candidate vs live comparisons)."""

    model: str
    version: str
    role: str
    rows: int
    histograms: Mapping[str, tuple[Counts, float]]
    classes: Mapping[str, Mapping[str, int]]
    window: Mapping[str, Counts] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class DriftCounts:
    """One version's drift tracker of one kind ("inputs" or "outputs"): reference and window bin counts."""

    model: str
    version: str
    kind: str
    fingerprint: str
    source: str
    columns: tuple[str, ...]
    reference_rows: int
    reference: tuple[Counts, ...]
    current: tuple[Counts, ...]

    def __post_init__(self) -> None:
        widths = {len(row) for row in (*self.reference, *self.current)}
        rows = len(self.columns)
        if not rows or len(self.reference) != rows or len(self.current) != rows:
            raise ValueError("drift counts need one reference and one window row per column")
        if len(widths) != 1 or 0 in widths:
            raise ValueError("drift counts need the same number of bins in every row")


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeCounts:
    """Labelled rows of one version (served or shadowed) and how many it predicted right; for values
    (a regressor), how many and the running mean, squared deviations and squares of the |errors|."""

    model: str
    version: str
    labelled: int
    correct: int
    valued: int = 0
    abs_mean: float = 0.0
    abs_m2: float = 0.0
    sq_sum: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeSlots:
    """Label counts per 10 s slot of wall time, by column: `slots` the slot numbers (oldest first),
    `counts` one tuple per count `OutcomeTally` keeps (labelled, right...), one value per slot.
    Columns, not pairs: a day of slots reads back in one numpy conversion per column."""

    model: str
    version: str
    role: str
    slots: tuple[int, ...]
    counts: tuple[Counts, ...]

    def __post_init__(self) -> None:
        if any(len(column) != len(self.slots) for column in self.counts):
            raise ValueError("outcome slots need one count per slot in every column")


@dataclass(frozen=True, slots=True, kw_only=True)
class DisagreementTotals:
    """Labelled rows where a shadow version predicted another class than the primary, and who was right."""

    model: str
    primary: str
    shadow: str
    rows: int
    primary_right: int
    shadow_right: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringSnapshot:
    """Everything one replica publishes (see the module docstring); `final` when it shut down."""

    replica: str
    time: float
    final: bool = False
    distributions: tuple[DistributionCounts, ...] = ()
    drift: tuple[DriftCounts, ...] = ()
    outcomes: tuple[OutcomeCounts, ...] = ()
    slots: tuple[OutcomeSlots, ...] = ()
    disagreements: tuple[DisagreementTotals, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "replica": self.replica,
            "time": self.time,
            "final": self.final,
            "distributions": [
                [d.model, d.version, d.role, d.rows,
                 {k: [list(c), s] for k, (c, s) in d.histograms.items()},
                 {k: dict(v) for k, v in d.classes.items()}, {k: list(c) for k, c in d.window.items()}]
                for d in self.distributions
            ],
            "drift": [
                [d.model, d.version, d.kind, d.fingerprint, d.source, list(d.columns), d.reference_rows,
                 [list(c) for c in d.reference], [list(c) for c in d.current]]
                for d in self.drift
            ],
            "outcomes": [
                [o.model, o.version, o.labelled, o.correct, o.valued, o.abs_mean, o.abs_m2, o.sq_sum]
                for o in self.outcomes
            ],
            "slots": [
                [s.model, s.version, s.role, _steps(s.slots), [list(c) for c in s.counts]] for s in self.slots
            ],
            "disagreements": [
                [d.model, d.primary, d.shadow, d.rows, d.primary_right, d.shadow_right]
                for d in self.disagreements
            ],
        }  # fmt: skip

    @classmethod
    def from_json(cls, data: Any) -> MonitoringSnapshot | None:
        """The snapshot in `data`, or None when any part of it is not what `to_json` writes."""
        try:
            return cls(
                replica=_str(data["replica"]),
                time=float(data["time"]),
                final=bool(data.get("final", False)),
                distributions=tuple(_distribution_counts(found) for found in data["distributions"]),
                drift=tuple(
                    DriftCounts(
                        model=_str(m), version=_str(v), kind=_str(k), fingerprint=_str(f), source=_str(s),
                        columns=tuple(_str(x) for x in _list(cols)), reference_rows=int(n),
                        reference=tuple(_counts(x) for x in ref), current=tuple(_counts(x) for x in cur),
                    )
                    for m, v, k, f, s, cols, n, ref, cur in data["drift"]
                ),
                outcomes=tuple(_outcome_counts(found) for found in data["outcomes"]),
                slots=tuple(
                    OutcomeSlots(
                        model=_str(m), version=_str(v), role=_str(r),
                        slots=tuple(np.cumsum(_counts(steps), dtype=np.int64).tolist()),
                        counts=tuple(_counts(c) for c in _list(columns)),
                    )
                    for m, v, r, steps, columns in data["slots"]
                ),
                disagreements=tuple(  # absent from an older release's snapshot
                    DisagreementTotals(
                        model=_str(m), primary=_str(p), shadow=_str(v), rows=int(n), primary_right=int(pr),
                        shadow_right=int(sr),
                    )
                    for m, p, v, n, pr, sr in data.get("disagreements", ())
                ),
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, AttributeError):
            return None


def _distribution_counts(found: Any) -> DistributionCounts:
    m, v, r, n, h, c, *window = _list(found)  # an older release wrote no window
    return DistributionCounts(
        model=_str(m), version=_str(v), role=_str(r), rows=int(n),
        histograms={_str(k): (_counts(x), float(total)) for k, (x, total) in h.items()},
        classes={_str(k): {_str(name): int(x) for name, x in named.items()} for k, named in c.items()},
        window={_str(k): _counts(x) for k, x in (window[0] if window else {}).items()},
    )  # fmt: skip


def _outcome_counts(found: Any) -> OutcomeCounts:
    m, v, n, c, *errors = _list(found)  # an older release wrote no error statistics
    valued, abs_mean, abs_m2, sq_sum = errors if errors else (0, 0.0, 0.0, 0.0)
    return OutcomeCounts(
        model=_str(m), version=_str(v), labelled=int(n), correct=int(c), valued=int(valued),
        abs_mean=float(abs_mean), abs_m2=float(abs_m2), sq_sum=float(sq_sum),
    )  # fmt: skip


def _steps(slots: tuple[int, ...]) -> list[int]:
    """Slot numbers as steps from the one before (mostly 1): a day of slots in 17 kB of JSON, not 95."""
    return np.diff(np.asarray(slots, dtype=np.int64), prepend=0).tolist()  # type: ignore[no-any-return]


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("expected a string")
    return value


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise TypeError("expected a list")
    return value


def _counts(values: Any) -> Counts:
    """A list of integers as a tuple, converted in one numpy pass (a day of slots is 8,640 of them)."""
    found = np.asarray(_list(values))
    if found.ndim != 1 or (found.size and found.dtype.kind not in "iu"):
        raise ValueError("expected a list of integers")
    return tuple(found.tolist())


# -- export from the live monitor (called with the monitor's lock held) ---------------------------


def distribution_counts(
    model: str, version: str, role: str, monitor: VersionMonitor, now: float
) -> DistributionCounts | None:
    """The version's cumulative outputs in `role`, or None when it never had that role."""
    outputs: OutputDistribution | None = monitor.distribution(role)
    if outputs is None:
        return None
    return DistributionCounts(
        model=model,
        version=version,
        role=role,
        rows=monitor.rows if role == "primary" else monitor.shadow_rows,
        histograms={k: (_counts(h.counts.tolist()), h.total) for k, h in outputs.histograms.items()},
        classes={k: dict(c.counts) for k, c in outputs.classes.items()},
        window={k: _counts(counts.tolist()) for k, counts in outputs.windowed(now).items()},
    )


def drift_counts(
    model: str, version: str, kind: str, tracker: DriftTracker | None, now: float
) -> DriftCounts | None:
    """The tracker's reference and current window as counts, or None while it has no reference."""
    if tracker is None or tracker.reference is None or tracker.window is None:
        return None
    reference = tracker.reference
    current = tracker.window.total(now)
    return DriftCounts(
        model=model,
        version=version,
        kind=kind,
        fingerprint=fingerprint(tracker),
        source=tracker.reference_source,
        columns=tracker.columns,
        reference_rows=reference.rows,
        reference=tuple(_counts(row.tolist()) for row in reference.counts),
        current=tuple(_counts(row.tolist()) for row in current),
    )


def fingerprint(tracker: DriftTracker) -> str:
    """Equal for two trackers whose bins and reference counts are equal (replicas sharing a file)."""
    assert tracker.reference is not None
    digest = hashlib.sha256(tracker.reference_source.encode())
    digest.update("\0".join(tracker.columns).encode())
    for edges in tracker.reference.edges:
        digest.update(np.asarray(edges, dtype=np.float64).tobytes() + b"|")
    digest.update(np.asarray(tracker.reference.counts, dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]
