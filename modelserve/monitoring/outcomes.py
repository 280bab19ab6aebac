"""Accuracy (or error) by model version, from true labels/values posted back by request id.

`OutcomeTally` is the typed API a gate or a page reads: `summary(model, version)` gives the samples,
the accuracy with its Wilson interval (classifiers), or the mean absolute error with its Student t
interval and the RMSE (regressors). Outcomes are counted for every request, and separately for those
an experiment assigned (`experiment_only=True`), so accuracy is known inside and outside experiments.

`LabelJoin` remembers, by request id, what each version predicted (bounded `cachetools.TTLCache`
behind a lock: shadow predictions arrive from the shadow pool's threads) until the truth arrives; a
label posted for an unknown, expired or already labelled id is counted, never silently dropped.
Where the primary and a shadow version predicted different classes for a labelled row, it counts
which one was right (`disagreements`): the question a shadow analysis has to answer.

Label counts are also kept per 10-second slot of wall time (the last 24 hours), so a gate can ask
for the labels that arrived since a rollout began, not since the process started: per version and
role (`labelled_since`: rows it served, or predicted as a shadow), and per (primary, shadow) pair on
the very same rows (`paired_since`), the like-for-like comparison of a shadow stage.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cachetools import TTLCache

from modelserve.experiments.stats import Interval, mean_interval, wilson_interval
from modelserve.monitoring.snapshot import DisagreementTotals, OutcomeCounts, OutcomeSlots

ACCURACY = "accuracy"
ERROR = "error"
#: Rows of one request whose predictions are kept for the join (a bigger batch keeps its first rows).
MAX_ROWS = 64
#: Resolution and reach of the label counts by time (`OutcomeTally.labelled_since`).
SLOT_S = 10.0
MAX_SLOTS = 8640


@dataclass(frozen=True, slots=True, kw_only=True)
class OutcomeSummary:
    """One version's outcome metric. `kind` is "accuracy", "error", or None before any outcome."""

    model: str
    version: str
    kind: str | None
    samples: int
    correct: int = 0
    accuracy: float | None = None
    accuracy_interval: Interval | None = None
    mean_abs_error: float | None = None
    abs_error_interval: Interval | None = None
    rmse: float | None = None

    def to_dict(self) -> dict[str, Any]:
        def interval(value: Interval | None) -> list[float] | None:
            return None if value is None or math.isnan(value.low) else [value.low, value.high]

        return {
            "model": self.model,
            "version": self.version,
            "kind": self.kind,
            "samples": self.samples,
            "correct": self.correct if self.kind == ACCURACY else None,
            "accuracy": self.accuracy,
            "accuracy_interval": interval(self.accuracy_interval),
            "mean_abs_error": self.mean_abs_error,
            "abs_error_interval": interval(self.abs_error_interval),
            "rmse": self.rmse,
        }


@dataclass(slots=True)
class LabelCounts:
    """Labelled rows (classes) and the running error statistics (values) of one version; mergeable."""

    labelled: int = 0
    correct: int = 0
    valued: int = 0
    abs_mean: float = 0.0  # running mean and sum of squared deviations (Chan's merge) of |error|
    abs_m2: float = 0.0
    sq_sum: float = 0.0

    def add_errors(self, errors: np.ndarray) -> None:
        absolute = np.abs(errors)
        n_b = absolute.size
        if n_b == 0:
            return
        mean_b = float(absolute.mean())
        m2_b = float(((absolute - mean_b) ** 2).sum())
        n_a, n = self.valued, self.valued + n_b
        delta = mean_b - self.abs_mean
        self.abs_mean += delta * n_b / n
        self.abs_m2 += m2_b + delta * delta * n_a * n_b / n
        self.valued = n
        self.sq_sum += float((errors.astype(np.float64) ** 2).sum())

    def merge(self, other: LabelCounts) -> None:
        """Add `other`'s counts (another replica's): the error statistics combine exactly (Chan)."""
        self.labelled += other.labelled
        self.correct += other.correct
        n_a, n_b = self.valued, other.valued
        if n_b:
            n = n_a + n_b
            delta = other.abs_mean - self.abs_mean
            self.abs_mean += delta * n_b / n
            self.abs_m2 += other.abs_m2 + delta * delta * n_a * n_b / n
            self.valued = n
            self.sq_sum += other.sq_sum


class OutcomeTally:
    """Per (model, version) outcome counts, overall and within experiments. Thread-safe."""

    def __init__(self, *, wall_clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str, bool], LabelCounts] = {}
        self._wall_clock = wall_clock
        #: (model, version, role) or (model, primary, "paired:" + shadow) -> slot -> counts, oldest first.
        self._slots: dict[tuple[str, str, str], dict[int, list[int]]] = {}

    def _both(self, model: str, version: str, experiment: bool) -> list[LabelCounts]:
        keys = [(model, version, False)] + ([(model, version, True)] if experiment else [])
        return [self._counts.setdefault(key, LabelCounts()) for key in keys]

    def record_labels(
        self, model: str, version: str, correct: int, total: int, *, experiment: bool, role: str = "primary"
    ) -> None:
        """Count `total` labelled rows of which `correct` were predicted right (by `version` serving
        them, role "primary", or predicting them in shadow, role "shadow")."""
        with self._lock:
            for counts in self._both(model, version, experiment):
                counts.labelled += total
                counts.correct += correct
            self._add_to_slot((model, version, role), total, correct)

    def record_paired(
        self, model: str, primary: str, shadow: str, primary_correct: int, shadow_correct: int, total: int
    ) -> None:
        """Count `total` labelled rows that both the primary and a shadow version predicted."""
        with self._lock:
            self._add_to_slot((model, primary, "paired:" + shadow), total, primary_correct, shadow_correct)

    def _add_to_slot(self, key: tuple[str, str, str], *counts: int) -> None:
        slot = int(self._wall_clock() // SLOT_S)
        slots = self._slots.setdefault(key, {})
        found = slots.setdefault(slot, [0] * len(counts))
        for i, count in enumerate(counts):
            found[i] += count
        while len(slots) > MAX_SLOTS:
            del slots[next(iter(slots))]

    def _since(self, key: tuple[str, str, str], since: float, width: int) -> list[int]:
        first = int(since // SLOT_S)
        with self._lock:
            found = [list(c) for slot, c in self._slots.get(key, {}).items() if slot >= first]
        return [sum(c[i] for c in found) for i in range(width)]

    def labelled_since(
        self, model: str, version: str, since: float, role: str = "primary"
    ) -> tuple[int, int]:
        """`(correct, labelled)` rows of `version` in `role` labelled at or after wall time `since` (to
        the 10 s slot that holds it; at most the last 24 hours)."""
        labelled, correct = self._since((model, version, role), since, 2)
        return correct, labelled

    def paired_since(self, model: str, primary: str, shadow: str, since: float) -> tuple[int, int, int]:
        """`(primary correct, shadow correct, rows)` over the rows both versions predicted, labelled at
        or after wall time `since`: the same rows, so the two accuracies compare like with like."""
        rows, primary_correct, shadow_correct = self._since((model, primary, "paired:" + shadow), since, 3)
        return primary_correct, shadow_correct, rows

    def export_counts(self, *, slots: bool = True) -> tuple[list[OutcomeCounts], list[OutcomeSlots]]:
        """Labelled and right rows per version, and per slot unless not `slots` (the fleet snapshot's
        outcome part; a day of slots is most of its size and export time)."""
        with self._lock:
            overall = [
                OutcomeCounts(
                    model=m,
                    version=v,
                    labelled=c.labelled,
                    correct=c.correct,
                    valued=c.valued,
                    abs_mean=c.abs_mean,
                    abs_m2=c.abs_m2,
                    sq_sum=c.sq_sum,
                )
                for (m, v, experiment), c in self._counts.items()
                if not experiment and (c.labelled or c.valued)
            ]
            series = [
                OutcomeSlots(
                    model=m,
                    version=v,
                    role=role,
                    slots=tuple(found),
                    counts=tuple(zip(*found.values(), strict=True)),
                )
                for (m, v, role), found in (self._slots.items() if slots else ())
            ]
        return overall, series

    def record_errors(self, model: str, version: str, errors: np.ndarray, *, experiment: bool) -> None:
        """Count regression errors (prediction minus truth), one per row."""
        errors = np.asarray(errors, dtype=np.float64).ravel()
        with self._lock:
            for counts in self._both(model, version, experiment):
                counts.add_errors(errors)

    def versions(self, model: str) -> list[str]:
        """Versions of `model` with any outcome, in version order."""
        with self._lock:
            found = {version for (m, version, _) in self._counts if m == model}
        return sorted(found, key=lambda v: (len(v), v))

    def forget(self, model: str, version: str | None = None) -> None:
        with self._lock:
            for key in [k for k in self._counts if k[0] == model and version in (None, k[1])]:
                del self._counts[key]
            for pair in [k for k in self._slots if k[0] == model and version in (None, k[1])]:
                del self._slots[pair]

    def summary(
        self, model: str, version: str, *, experiment_only: bool = False, alpha: float = 0.05
    ) -> OutcomeSummary:
        """Accuracy (Wilson interval) or mean absolute error (t interval) of `version`, with samples."""
        with self._lock:
            found = self._counts.get((model, version, experiment_only))
            counts = (
                LabelCounts(**{name: getattr(found, name) for name in LabelCounts.__slots__})
                if found
                else None
            )
        return summarize(model, version, counts if counts is not None else LabelCounts(), alpha=alpha)


def summarize(model: str, version: str, counts: LabelCounts, *, alpha: float = 0.05) -> OutcomeSummary:
    """Accuracy (Wilson interval) or mean absolute error (t interval) of `counts`, with samples."""
    if counts.labelled == 0 and counts.valued == 0:
        return OutcomeSummary(model=model, version=version, kind=None, samples=0)
    if counts.labelled >= counts.valued:
        n = counts.labelled
        return OutcomeSummary(
            model=model,
            version=version,
            kind=ACCURACY,
            samples=n,
            correct=counts.correct,
            accuracy=counts.correct / n,
            accuracy_interval=wilson_interval(counts.correct, n, alpha=alpha),
        )
    n = counts.valued
    variance = counts.abs_m2 / (n - 1) if n > 1 else 0.0
    return OutcomeSummary(
        model=model,
        version=version,
        kind=ERROR,
        samples=n,
        mean_abs_error=counts.abs_mean,
        abs_error_interval=mean_interval(n, counts.abs_mean, variance, alpha=alpha),
        rmse=math.sqrt(counts.sq_sum / n),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Prediction:
    """What one request's versions predicted, remembered until its truth arrives."""

    model: str
    version: str
    kind: str  # ACCURACY (class labels) or ERROR (values)
    values: np.ndarray
    experiment: bool = False
    #: Shadow versions' predictions for the same rows, added when their runs settle.
    shadows: dict[str, np.ndarray] = field(default_factory=dict)
    #: Every id this prediction is kept under, when more than one (server-issued and the client's).
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinResult:
    """A label joined to its prediction: per version (primary first), whether each row was right."""

    request_id: str
    prediction: Prediction
    right: Mapping[str, np.ndarray]  # version -> bool per row (classes) or error per row (values)


def predicted_values(
    outputs: Mapping[str, np.ndarray], label_output: str | None = None
) -> tuple[str, np.ndarray] | None:
    """The prediction to score against a truth: `(kind, values per row)`, or None when there is none.

    `label_output` names the output to use; otherwise the first label output (integers, strings), or
    else the argmax of the first float output with several columns (class index), or else the first
    float output's values (a regression).
    """
    items = list(outputs.items())
    if label_output is not None:
        items = [(name, array) for name, array in items if name == label_output]
    for _, array in items:
        array = np.asarray(array)
        if array.dtype.kind in "biuOSU" and array.ndim >= 1:
            # A copy: a view would hold onnxruntime's output buffer as long as the prediction waits.
            return ACCURACY, array.reshape(array.shape[0], -1)[:MAX_ROWS, 0].copy()
    for _, array in items:
        array = np.asarray(array)
        if array.dtype.kind == "f" and array.ndim >= 1:
            flat = array.reshape(array.shape[0], -1)[:MAX_ROWS]
            if flat.shape[1] > 1:
                return ACCURACY, flat.argmax(axis=1)
            return ERROR, flat[:, 0].astype(np.float64)
    return None


def label_strings(values: np.ndarray) -> list[str]:
    """Class labels as the join compares them: integral floats as integers, bytes decoded."""
    out = []
    for value in values.tolist():
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        out.append(str(value))
    return out


def score(kind: str, predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per row: True where a label was right (ACCURACY), or prediction minus truth (ERROR)."""
    if kind == ACCURACY:
        return np.array([a == b for a, b in zip(label_strings(predicted), label_strings(truth), strict=True)])
    return predicted.astype(np.float64) - truth.astype(np.float64)


_MISSING: Any = object()


def expected_truth(prediction: Prediction, truth: Any) -> np.ndarray:
    """`truth` as one value per row of `prediction`; ValueError when it cannot be scored against it."""
    expected = np.atleast_1d(np.asarray(truth))
    rows = prediction.values.shape[0]
    if expected.ndim != 1 or expected.shape[0] != rows:
        raise ValueError(f"the label must be one value per row: the request had {rows} row(s)")
    if prediction.kind == ERROR and expected.dtype.kind not in "biuf":
        raise ValueError("this model predicts numbers: the true value must be a number")
    return expected


@dataclass(slots=True)
class DisagreementCounts:
    """Labelled rows where a shadow version predicted another class than the primary, and who was right."""

    rows: int = 0
    primary_right: int = 0
    shadow_right: int = 0

    def to_dict(self, model: str, primary: str, shadow: str) -> dict[str, Any]:
        neither = self.rows - self.primary_right - self.shadow_right
        return {
            "model": model,
            "primary_version": primary,
            "shadow_version": shadow,
            "disagreeing_rows": self.rows,
            "primary_right": self.primary_right,
            "shadow_right": self.shadow_right,
            "neither_right": neither,
            "primary_right_rate": self.primary_right / self.rows if self.rows else None,
            "shadow_right_rate": self.shadow_right / self.rows if self.rows else None,
            "primary_right_interval": _interval(self.primary_right, self.rows),
            "shadow_right_interval": _interval(self.shadow_right, self.rows),
        }


def _interval(successes: int, n: int) -> list[float] | None:
    if n == 0:
        return None
    found = wilson_interval(successes, n)
    return [found.low, found.high]


class LabelJoin:
    """Predictions by request id until the truth is posted; scores every version that saw the request.

    Thread-safe: one lock around the cache (the event loop remembers and resolves, the shadow pool's
    threads add shadow predictions).
    """

    def __init__(
        self,
        tally: OutcomeTally,
        *,
        maxsize: int = 100_000,
        ttl: float = 3600.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tally = tally
        self._pending: TTLCache[str, Prediction | None] = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer)
        self.joined = 0
        self.unknown = 0
        self.duplicate = 0
        self._lock = threading.Lock()
        self._disagreements: dict[tuple[str, str, str], DisagreementCounts] = {}

    def remember(self, request_id: str, prediction: Prediction, *, also: str | None = None) -> None:
        """Keep `prediction` for `request_id`, and under `also` (the client's own id of a request the
        server gave another id): a label for either id joins it, once."""
        with self._lock:
            if also is not None and also != request_id:
                prediction = replace(prediction, aliases=(request_id, also))
                self._pending[also] = prediction
            self._pending[request_id] = prediction

    def add_shadow(self, request_id: str, version: str, values: np.ndarray) -> None:
        """Attach a shadow version's prediction to a remembered request (ignored when unknown)."""
        with self._lock:
            prediction = self._pending.get(request_id)
            if prediction is not None:
                prediction.shadows[version] = values

    def disagreements(self, model: str) -> list[dict[str, Any]]:
        """Per (primary, shadow) version pair: labelled rows where they disagreed, and who was right."""
        with self._lock:
            found = sorted((key, counts) for key, counts in self._disagreements.items() if key[0] == model)
        return [counts.to_dict(*key) for key, counts in found]

    def export_disagreements(self) -> list[DisagreementTotals]:
        """Every (model, primary, shadow) pair's disagreement counts (the fleet snapshot's part)."""
        with self._lock:
            return [
                DisagreementTotals(
                    model=m,
                    primary=p,
                    shadow=v,
                    rows=c.rows,
                    primary_right=c.primary_right,
                    shadow_right=c.shadow_right,
                )
                for (m, p, v), c in self._disagreements.items()
            ]

    def resolve(self, request_id: str, truth: Any, *, model: str | None = None) -> JoinResult | None:
        """Score the request's versions against `truth` (a scalar, or one value per row).

        None (and counted) when the id is unknown, expired, of another model than `model`, or labelled.
        """
        with self._lock:
            prediction = self._pending.get(request_id, _MISSING)
            if prediction is _MISSING or (prediction is not None and model not in (None, prediction.model)):
                self.unknown += 1
                return None
            if prediction is None:
                self.duplicate += 1
                return None
            expected_truth(prediction, truth)  # a bad label leaves the prediction waiting for a good one
            self._consume(request_id, prediction)
        return self.score(request_id, prediction, truth)

    def take(self, request_id: str, model: str) -> Prediction | None:
        """This process's copy of the request's prediction (with its shadows' predictions), marked
        labelled here; None when it has none. The fleet's join (`monitoring/fleet_labels.py`) decides
        once for the fleet, then scores this copy when the request was served here."""
        with self._lock:
            prediction = self._pending.get(request_id)
            if prediction is None or prediction.model != model:
                return None
            self._consume(request_id, prediction)
            return prediction

    def count(self, outcome: str) -> None:
        """Count a label that did not join: "unknown" or "duplicate" (decided by the fleet's join)."""
        with self._lock:
            if outcome == "duplicate":
                self.duplicate += 1
            else:
                self.unknown += 1

    def _consume(self, request_id: str, prediction: Prediction) -> None:
        self._pending[request_id] = None  # a second label for this id is a duplicate
        for alias in prediction.aliases:  # ... and for its other id (unless reused since)
            if alias != request_id and self._pending.get(alias) is prediction:
                self._pending[alias] = None

    def score(self, request_id: str, prediction: Prediction, truth: Any) -> JoinResult:
        """Count whether each version that predicted the request was right (ValueError: a bad label)."""
        expected = expected_truth(prediction, truth)
        with self._lock:
            self.joined += 1
            shadows = dict(prediction.shadows)
        right = {prediction.version: score(prediction.kind, prediction.values, expected)}
        for version, values in shadows.items():
            right[version] = score(prediction.kind, values, expected)
            if prediction.kind == ACCURACY and values.shape == prediction.values.shape:
                self._count_disagreements(prediction, version, values, right)
        for version, per_row in right.items():
            served = version == prediction.version
            experiment = prediction.experiment and served
            if prediction.kind == ACCURACY:
                self.tally.record_labels(
                    prediction.model, version, int(per_row.sum()), per_row.size, experiment=experiment,
                    role="primary" if served else "shadow",
                )  # fmt: skip
                if not served and per_row.shape == right[prediction.version].shape:
                    self.tally.record_paired(
                        prediction.model, prediction.version, version,
                        int(right[prediction.version].sum()), int(per_row.sum()), per_row.size,
                    )  # fmt: skip
            else:
                self.tally.record_errors(prediction.model, version, per_row, experiment=experiment)
        return JoinResult(request_id=request_id, prediction=prediction, right=right)

    def _count_disagreements(
        self, prediction: Prediction, version: str, values: np.ndarray, right: Mapping[str, np.ndarray]
    ) -> None:
        differ = np.array(
            [a != b for a, b in zip(label_strings(prediction.values), label_strings(values), strict=True)]
        )
        if not differ.any():
            return
        with self._lock:
            key = (prediction.model, prediction.version, version)
            counts = self._disagreements.setdefault(key, DisagreementCounts())
            counts.rows += int(differ.sum())
            counts.primary_right += int(right[prediction.version][differ].sum())
            counts.shadow_right += int(right[version][differ].sum())
