"""Running statistics of one shadow version of one model, bounded in memory and thread-safe.

Updates come from shadow worker threads; each takes one short lock. Latencies and differences go into
log-bucket histograms (`telemetry/histogram.py`, 2 % relative error), never into a growing list. Disagreeing
examples are kept in a reservoir (Algorithm R) of fixed size, so every disagreement seen so far is
equally likely to be in it. An example is bounded in bytes, whatever batch a client sends: it is
converted to JSON types once, when it enters the reservoir (on the shadow's thread), keeping at most
`EXAMPLE_VALUES` values per tensor (leading rows first) and `EXAMPLE_STRING` characters per string,
and says so (`truncated`, `shapes`). Nothing holds a client's whole tensors, and a snapshot only copies
small lists: status, the report and the rollout gate stay cheap under adversarial batches.

Besides the totals since the shadow began, the counts are kept per time window (`WINDOW_S` of wall
time, the last `MAX_WINDOWS`): a shadow that agreed at first and then drifted shows it, where the
cumulative rate would hide it.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from modelserve.experiments import stats as experiment_stats
from modelserve.shadow.compare import Comparison
from modelserve.telemetry.histogram import LogHistogram

#: At most this many values of each tensor are kept in a disagreement example.
EXAMPLE_VALUES = 256
#: Strings (BYTES tensors) in an example are cut to this many characters.
EXAMPLE_STRING = 256
#: Length of a time window of the per-window counts, and how many recent windows are kept (an hour).
WINDOW_S = 60.0
MAX_WINDOWS = 60
#: Per-window counts, in this order.
_WINDOW_FIELDS = ("samples", "rows", "agreeing_rows", "errors", "timeouts", "dropped")


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for the agreement rate (experiments' formula); (0, 1) with no trials."""
    if trials <= 0:
        return (0.0, 1.0)
    interval = experiment_stats.wilson_interval(successes, trials, alpha=1.0 - confidence)
    return (max(0.0, interval.low), min(1.0, interval.high))


def _bounded(array: Any) -> tuple[Any, bool]:
    """A tensor as JSON types with at most EXAMPLE_VALUES values: whole leading rows when they fit,
    else the first values in C order (flat). The bool says whether anything was left out."""
    value = np.asarray(array)
    if value.size <= EXAMPLE_VALUES:
        return _plain(value.tolist()), False
    row = int(np.prod(value.shape[1:], dtype=np.int64)) if value.ndim > 1 else 1
    if value.ndim >= 1 and 0 < row <= EXAMPLE_VALUES:
        return _plain(value[: EXAMPLE_VALUES // row].tolist()), True
    return _plain(value.flat[:EXAMPLE_VALUES].tolist()), True  # .flat[:n] copies n values, not the tensor


def bounded_tensors(tensors: Mapping[str, Any]) -> dict[str, Any]:
    """Named tensors as JSON types, each cut like an example's (at most EXAMPLE_VALUES values)."""
    return {name: _bounded(array)[0] for name, array in tensors.items()}


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value[: EXAMPLE_STRING * 4].decode("utf-8", errors="replace")[:EXAMPLE_STRING]
    if isinstance(value, str):
        return value[:EXAMPLE_STRING]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _example(
    *, request_id: str | None, primary_version: str, comparison: Comparison, inputs: Mapping[str, Any],
    primary: Mapping[str, Any], shadow: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """One disagreement as small JSON types (see the module docstring for the bound)."""
    truncated = False
    shapes: dict[str, dict[str, list[int]]] = {}
    parts: dict[str, dict[str, Any]] = {}
    for part, tensors in (("inputs", inputs), ("primary", primary), ("shadow", shadow)):
        converted: dict[str, Any] = {}
        for name, array in tensors.items():
            converted[name], cut = _bounded(array)
            if cut:
                truncated = True
                shapes.setdefault(part, {})[name] = [int(d) for d in np.shape(array)]
        parts[part] = converted
    example: dict[str, Any] = {
        "request_id": request_id, "primary_version": primary_version, "agreement": comparison.agreement,
        "max_abs_diff": comparison.max_abs_diff, **parts, "truncated": truncated,
    }  # fmt: skip
    if truncated:
        example["shapes"] = shapes  # the original shapes of the tensors cut short
    return example


class ShadowStats:
    """Agreement, differences, latencies, failures and disagreeing examples of one shadow version.

    `samples` counts completed comparisons (requests); agreement is counted per row. Arrays handed to
    `record_comparison` are read during the call only (a bounded copy enters the reservoir).
    """

    def __init__(
        self, model: str, shadow_version: str, *, reservoir_size: int = 50, confidence: float = 0.95,
        seed: int | None = None, window_s: float = WINDOW_S, wall_clock: Callable[[], float] = time.time,
    ) -> None:  # fmt: skip
        self.model = model
        self.window_s = window_s
        self._wall_clock = wall_clock
        #: [window index, samples, rows, agreeing_rows, errors, timeouts, dropped], oldest first.
        self._windows: deque[list[int]] = deque(maxlen=MAX_WINDOWS)
        self.shadow_version = shadow_version
        self.reservoir_size = reservoir_size
        self.confidence = confidence
        #: Monotonic time these stats began: the shadow report looks at the windows since then.
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._samples = self._rows = self._agreeing_rows = self._agreeing_samples = 0
        self._errors = self._timeouts = self._dropped = 0
        self._last_error: str | None = None
        self._disagreements_seen = 0
        self._reservoir: list[dict[str, Any]] = []
        self._primary_latency = LogHistogram()
        self._shadow_latency = LogHistogram()
        self._max_abs_diff = LogHistogram()
        self._js = LogHistogram()

    def record_comparison(
        self, comparison: Comparison, *, primary_latency_s: float, shadow_latency_s: float,
        inputs: Mapping[str, np.ndarray], primary_outputs: Mapping[str, np.ndarray],
        shadow_outputs: Mapping[str, np.ndarray], primary_version: str = "", request_id: str | None = None,
    ) -> None:  # fmt: skip
        """Count one completed comparison; a disagreeing one may enter the example reservoir."""
        with self._lock:
            window = self._window()
            window[1] += 1
            window[2] += comparison.rows
            window[3] += comparison.agreeing_rows
            self._samples += 1
            self._rows += comparison.rows
            self._agreeing_rows += comparison.agreeing_rows
            self._agreeing_samples += comparison.agree
            self._primary_latency.add(primary_latency_s)
            self._shadow_latency.add(shadow_latency_s)
            if comparison.max_abs_diff is not None:
                self._max_abs_diff.add(comparison.max_abs_diff)
            if comparison.js_distance is not None:
                self._js.add(comparison.js_distance)
            if comparison.agree:
                return
            self._disagreements_seen += 1
            if len(self._reservoir) < self.reservoir_size:
                slot = len(self._reservoir)
                self._reservoir.append(None)  # type: ignore[arg-type]  # filled just below
            else:
                slot = self._random.randrange(self._disagreements_seen)
                if slot >= self.reservoir_size:
                    return
            self._reservoir[slot] = _example(
                request_id=request_id, primary_version=primary_version, comparison=comparison,
                inputs=inputs, primary=primary_outputs, shadow=shadow_outputs,
            )  # fmt: skip

    def clear_examples(self) -> None:
        """Forget the disagreement examples (e.g. when the shadow is switched off); counts stay."""
        with self._lock:
            self._reservoir = []

    def record_error(self, message: str) -> None:
        """Count a shadow run that raised."""
        with self._lock:
            self._window()[4] += 1
            self._errors += 1
            self._last_error = message[:500]

    def record_timeout(self) -> None:
        """Count a shadow run that missed its deadline (its result, if any, is not compared)."""
        with self._lock:
            self._window()[5] += 1
            self._timeouts += 1

    def record_dropped(self) -> None:
        """Count a shadow run refused by the admission bound."""
        with self._lock:
            self._window()[6] += 1
            self._dropped += 1

    def _window(self) -> list[int]:
        """The current window's counts (call with the lock held)."""
        index = int(self._wall_clock() // self.window_s)
        if not self._windows or self._windows[-1][0] != index:
            self._windows.append([index, 0, 0, 0, 0, 0, 0])
        return self._windows[-1]

    def windows(self) -> list[dict[str, Any]]:
        """Counts per time window, oldest first (windows without any run are left out): start and end
        (wall time), compared requests and rows, agreement with its Wilson interval, failures."""
        with self._lock:
            found = [list(w) for w in self._windows]
        out = []
        for index, *counts in found:
            row = dict(zip(_WINDOW_FIELDS, counts, strict=True))
            rows, agreeing = row["rows"], row["agreeing_rows"]
            low, high = wilson_interval(agreeing, rows, self.confidence)
            out.append({
                "start": index * self.window_s, "end": (index + 1) * self.window_s, **row,
                "agreement_rate": agreeing / rows if rows else None,
                "agreement_interval": [low, high] if rows else None,
            })  # fmt: skip
        return out

    def snapshot(self, *, examples: bool = True) -> dict[str, Any]:
        """Every figure as plain JSON types (latencies in seconds, `*_s`); `examples=False` leaves out
        the disagreement examples (status pages and gates need only the figures)."""
        with self._lock:
            samples, rows, agreeing = self._samples, self._rows, self._agreeing_rows
            errors, timeouts, dropped = self._errors, self._timeouts, self._dropped
            summaries = {
                "primary_latency_s": self._primary_latency.summary(),
                "shadow_latency_s": self._shadow_latency.summary(),
                "max_abs_diff": self._max_abs_diff.summary(),
                "js_distance": self._js.summary(),
            }
            kept = list(self._reservoir) if examples else []
            agreeing_samples, last_error, seen = (
                self._agreeing_samples,
                self._last_error,
                self._disagreements_seen,
            )
        runs = samples + errors + timeouts
        low, high = wilson_interval(agreeing, rows, self.confidence)
        return {
            "model": self.model,
            "shadow_version": self.shadow_version,
            "samples": samples,
            "age_s": time.monotonic() - self.started,
            "agreeing_samples": agreeing_samples,
            "rows": rows,
            "agreeing_rows": agreeing,
            "agreement_rate": agreeing / rows if rows else None,
            "agreement_interval": [low, high],
            "confidence": self.confidence,
            **summaries,
            "runs": runs,
            "errors": errors,
            "timeouts": timeouts,
            "dropped": dropped,
            "error_rate": errors / runs if runs else None,
            "timeout_rate": timeouts / runs if runs else None,
            "drop_rate": dropped / (runs + dropped) if runs + dropped else None,
            "last_error": last_error,
            "disagreements_seen": seen,
            "window_s": self.window_s,
            "windows": self.windows() if examples else [],
            "disagreements": kept,  # each example is built once and never mutated: sharing is safe
        }  # fmt: skip
