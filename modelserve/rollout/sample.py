"""What a gate sees of one version: request, error and timeout counts and a latency histogram.

The controller reads a `Sample` per version from the metrics windows over everything since the
stage began (so successive looks see growing data, as the gates' confidence sequences assume); the
shadow report reads the same windows over the shadow's lifetime. Samples are plain values: the
statistics never care which process or replica the counts came from, only that they add up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from modelserve.telemetry.histogram import bucket_upper_edge, bucket_value
from modelserve.telemetry.windows import LatencyHistogram, WindowStats


class WindowReader(Protocol):
    """What samples read: `SlidingWindows` of this process, or every replica's (`fleet.windows`)."""

    def snapshot(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> WindowStats: ...
    def histogram(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> LatencyHistogram: ...
    def compute_histogram(
        self, model: str, version: str, role: str, window_s: float | None = None, now: float | None = None
    ) -> LatencyHistogram: ...


def histogram_from_buckets(buckets: dict[int, int]) -> LatencyHistogram:
    """A histogram holding these bucket counts (a saved one, or one built elsewhere)."""
    histogram = LatencyHistogram()
    for index, count in buckets.items():
        if count > 0:
            histogram.buckets[index] = histogram.buckets.get(index, 0) + count
            histogram.count += count
            histogram.total += bucket_value(index) * count
            histogram.maximum = max(histogram.maximum, bucket_upper_edge(index))
    return histogram


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    """Counts and latencies of one version over one period (treat `latency` as read-only)."""

    requests: int
    errors: int = 0
    timeouts: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    @classmethod
    def from_windows(
        cls,
        windows: WindowReader,
        model: str,
        version: str,
        role: str,
        window_s: float,
        now: float | None = None,
        *,
        compute: bool = False,
    ) -> Sample:
        """The series `(model, version, role)` over the newest `window_s`; `compute` picks the
        model-compute (thread CPU time) histogram instead of the latency one."""
        stats = windows.snapshot(model, version, role, window_s, now)
        histogram = (
            windows.compute_histogram(model, version, role, window_s, now)
            if compute
            else windows.histogram(model, version, role, window_s, now)
        )
        return cls(requests=stats.requests, errors=stats.errors, timeouts=stats.timeouts, latency=histogram)

    def rate(self, metric: str) -> tuple[int, int]:
        """(events, requests) of `error_rate` or `timeout_rate`."""
        return (self.errors if metric == "error_rate" else self.timeouts), self.requests

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the durable frozen baseline of a rollout)."""
        return {
            "requests": self.requests,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "latency": sorted([index, count] for index, count in self.latency.buckets.items()),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Sample:
        """Read back `to_dict()`."""
        histogram = histogram_from_buckets(
            {int(index): int(count) for index, count in raw.get("latency", ())}
        )
        return cls(
            requests=int(raw["requests"]),
            errors=int(raw.get("errors", 0)),
            timeouts=int(raw.get("timeouts", 0)),
            latency=histogram,
        )


def stage_samples(
    windows: WindowReader,
    model: str,
    candidate: str,
    baseline: str,
    *,
    shadow: bool,
    window_s: float,
    now: float | None = None,
) -> tuple[Sample, Sample, str]:
    """The candidate's and the baseline's samples for one look, and what their latencies measure.

    Like with like: both versions are compared on the thread CPU time of their model run
    ("compute"), which neither thread priority nor a busy host inflates. In a shadow stage the
    candidate ran on a low-priority shadow thread and the baseline served the request; in a canary
    stage both served requests, but one may run inline on the event loop and the other on a worker
    thread (whichever its warm-up found cheaper), and on a busy host the thread hop alone adds
    milliseconds to the wall-clock latency of one side only. A server that records no CPU times
    falls back to the latency for both ("latency").
    """
    role = "shadow" if shadow else "primary"
    mine = Sample.from_windows(windows, model, candidate, role, window_s, now, compute=True)
    theirs = Sample.from_windows(windows, model, baseline, "primary", window_s, now, compute=True)
    if mine.latency.count and theirs.latency.count:
        return mine, theirs, "compute"
    mine = Sample.from_windows(windows, model, candidate, role, window_s, now)
    theirs = Sample.from_windows(windows, model, baseline, "primary", window_s, now)
    return mine, theirs, "latency"
