"""OpenTelemetry metrics for modelserve, over an injected MeterProvider.

Every series is labelled by a bounded set of values: model, version, role and route reason for
requests; model, shadow version and primary version for shadow comparisons; flag, variant and reason
for flag evaluations. A targeting key or request id is never a label. Attribute dicts are built
once per label tuple and reused, so recording is a dict lookup plus the SDK's own work.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Histogram,
    HistogramDataPoint,
    Metric,
)

from modelserve.telemetry.spans import ROLE_PRIMARY

_log = logging.getLogger(__name__)

METER_NAME = "modelserve"

REQUESTS = "modelserve.requests"
ERRORS = "modelserve.errors"
REQUEST_DURATION = "modelserve.request.duration"
IN_FLIGHT = "modelserve.in_flight"
SHADOW_COMPARISONS = "modelserve.shadow.comparisons"
SHADOW_AGREEMENTS = "modelserve.shadow.agreements"
SHADOW_DROPS = "modelserve.shadow.drops"
SHADOW_TIMEOUTS = "modelserve.shadow.timeouts"
SHADOW_ERRORS = "modelserve.shadow.errors"
FLAG_EVALUATIONS = "modelserve.flag.evaluations"
ROLLOUT_STAGE = "modelserve.rollout.stage"
CANARY_WEIGHT = "modelserve.canary.weight"

#: Latency buckets in seconds: in-process inference takes µs, HTTP requests ms.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005,
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

#: Past this many distinct label tuples per family, attribute dicts are built per call, not cached.
MAX_CACHED_LABEL_SETS = 4096


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutReading:
    """One model's rollout state, as read by the gauge callbacks at collection time.

    `stage_index` counts from 0 (`stage` is its name, e.g. "shadow" or "canary-5"); `stage=None`
    means no rollout is running, and only the canary-weight gauge reports the model. `canary_weight`
    is the fraction of traffic (0..1) the candidate version receives.
    """

    model: str
    stage: str | None = None
    stage_index: int = 0
    canary_weight: float
    candidate: str = ""


class _LabelCache:
    """Attribute dicts for one label schema, one per distinct value tuple."""

    __slots__ = ("_cache", "_names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self._names = names
        self._cache: dict[tuple[str, ...], dict[str, str]] = {}

    def get(self, values: tuple[str, ...]) -> dict[str, str]:
        attributes = self._cache.get(values)
        if attributes is None:
            attributes = dict(zip(self._names, values, strict=True))
            if len(self._cache) < MAX_CACHED_LABEL_SETS:
                self._cache[values] = attributes
        return attributes


class _Tally:
    """Cumulative counts per label tuple, reported by an observable instrument at collection time.

    The OTel SDK spends ~10 µs per synchronous `add` (it re-validates and re-hashes the attributes);
    a locked dict increment costs well under 1 µs, and a cumulative observable counter exports the
    same series.
    """

    __slots__ = ("_counts", "_labels", "_lock")

    def __init__(self, names: tuple[str, ...]) -> None:
        self._labels = _LabelCache(names)
        self._counts: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()  # shadow results are recorded from worker threads

    def add(self, key: tuple[str, ...], amount: int = 1) -> None:
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + amount

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._counts.items())
        return [Observation(value, self._labels.get(key)) for key, value in items]


class _LatencyTally:
    """A cumulative explicit-bucket histogram per label tuple, kept locally.

    The SDK's synchronous `Histogram.record` costs ~10 µs per call (attribute cleaning and hashing),
    a noticeable share of a ~150 µs request; a bisect and three increments cost well under 1 µs. The
    tally is exported as an OTel `Histogram` metric by the `/metrics` reader (`as_metric`).
    """

    __slots__ = ("_bounds", "_labels", "_lock", "_series", "_start_ns")

    def __init__(self, names: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self._labels = _LabelCache(names)
        self._bounds = bounds
        self._series: dict[tuple[str, ...], list[Any]] = {}  # key -> [bucket counts, sum, count, min, max]
        self._lock = threading.Lock()
        self._start_ns = time.time_ns()

    def add(self, key: tuple[str, ...], value: float) -> None:
        index = bisect.bisect_left(self._bounds, value)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = [[0] * (len(self._bounds) + 1), 0.0, 0, value, value]
            series[0][index] += 1
            series[1] += value
            series[2] += 1
            if value < series[3]:
                series[3] = value
            if value > series[4]:
                series[4] = value

    def as_metric(self, name: str, description: str) -> Metric:
        now = time.time_ns()
        with self._lock:
            points = [
                HistogramDataPoint(
                    attributes=self._labels.get(key),
                    start_time_unix_nano=self._start_ns,
                    time_unix_nano=now,
                    count=count,
                    sum=total,
                    bucket_counts=list(buckets),
                    explicit_bounds=list(self._bounds),
                    min=low,
                    max=high,
                )
                for key, (buckets, total, count, low, high) in self._series.items()
            ]
        return Metric(
            name=name,
            description=description,
            unit="s",
            data=Histogram(data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE),
        )


class Metrics:
    """modelserve's instruments on the meter named "modelserve" of the given (or global) provider.

    `rollouts` is called at each collection to feed the rollout-stage and canary-weight gauges; it
    can also be set later with `set_rollout_source` once the rollout controller exists.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        rollouts: Callable[[], Iterable[RolloutReading]] | None = None,
        sdk_histogram: bool = True,
    ) -> None:
        meter = metrics.get_meter(METER_NAME, meter_provider=meter_provider)
        #: False: latency goes to a local tally that only the `/metrics` reader exports (`local_metrics`);
        #: True: through the SDK histogram, so OTLP / console exporters see it too (at ~10 µs a request).
        self.sdk_histogram = sdk_histogram
        self._latency = _LatencyTally(("model", "version", "role", "route_reason"), LATENCY_BUCKETS_S)
        self._rollouts = rollouts
        request_labels = ("model", "version", "role", "route_reason")
        shadow_labels = ("model", "version", "primary_version")
        self._requests = _Tally(request_labels)
        self._errors = _Tally(request_labels)
        self._in_flight = _Tally(("model", "version", "role"))
        self._shadow_comparisons = _Tally(shadow_labels)
        self._shadow_agreements = _Tally(shadow_labels)
        self._shadow_drops = _Tally(shadow_labels)
        self._shadow_timeouts = _Tally(shadow_labels)
        self._shadow_errors = _Tally(shadow_labels)
        self._flag_evaluations = _Tally(("flag", "variant", "reason"))
        self._request_labels = _LabelCache(request_labels)
        counters = (
            (REQUESTS, self._requests, "{request}", "Inference requests"),
            (ERRORS, self._errors, "{request}", "Inference requests that failed (status >= 500)"),
            (SHADOW_COMPARISONS, self._shadow_comparisons, "{comparison}", "Shadow results compared"),
            (SHADOW_AGREEMENTS, self._shadow_agreements, "{comparison}", "Shadow results that agreed"),
            (SHADOW_DROPS, self._shadow_drops, "{ticket}", "Shadow runs dropped at admission (pool full)"),
            (SHADOW_TIMEOUTS, self._shadow_timeouts, "{ticket}", "Shadow runs that timed out"),
            (SHADOW_ERRORS, self._shadow_errors, "{ticket}", "Shadow runs that raised"),
            (
                FLAG_EVALUATIONS,
                self._flag_evaluations,
                "{evaluation}",
                "Flag evaluations by variant and reason",
            ),
        )
        for name, tally, unit, description in counters:
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
            )
        meter.create_observable_up_down_counter(
            IN_FLIGHT,
            callbacks=[self._in_flight.observe],
            unit="{request}",
            description="Inferences running now",
        )
        # No observable histogram exists in OTel: latency is the one measurement that goes through the SDK.
        self._duration = meter.create_histogram(
            REQUEST_DURATION,
            unit="s",
            description="Request latency",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        )
        meter.create_observable_gauge(
            ROLLOUT_STAGE, callbacks=[self._observe_stage], unit="{stage}", description="Rollout stage index"
        )
        meter.create_observable_gauge(
            CANARY_WEIGHT,
            callbacks=[self._observe_weight],
            unit="1",
            description="Fraction of traffic sent to the candidate version",
        )

    def set_rollout_source(self, rollouts: Callable[[], Iterable[RolloutReading]] | None) -> None:
        """Set the function the rollout gauges read at collection time."""
        self._rollouts = rollouts

    def record_request(
        self, model: str, version: str, role: str, reason: str, latency_s: float, error: bool
    ) -> None:
        """Count one request, its latency and, if it failed, an error."""
        key = (model, version, role, reason)
        self._requests.add(key)
        if error:
            self._errors.add(key)
        if self.sdk_histogram:
            self._duration.record(latency_s, self._request_labels.get(key))
        else:
            self._latency.add(key, latency_s)

    def local_metrics(self) -> list[Metric]:
        """Metrics kept outside the SDK, for the `/metrics` reader to export beside the SDK's."""
        if self.sdk_histogram:
            return []
        return [self._latency.as_metric(REQUEST_DURATION, "Request latency")]

    def add_in_flight(self, model: str, version: str, delta: int, role: str = ROLE_PRIMARY) -> None:
        """Add `delta` (+1 on start, -1 on finish) to the in-flight count of a version."""
        self._in_flight.add((model, version, role), delta)

    @contextmanager
    def in_flight(self, model: str, version: str, role: str = ROLE_PRIMARY) -> Iterator[None]:
        """Count an inference as in flight for the duration of the block."""
        key = (model, version, role)
        self._in_flight.add(key, 1)
        try:
            yield
        finally:
            self._in_flight.add(key, -1)

    def record_shadow_comparison(self, model: str, version: str, primary_version: str, agree: bool) -> None:
        """Count a shadow result of `version` compared with the primary's, and whether they agreed."""
        key = (model, version, primary_version)
        self._shadow_comparisons.add(key)
        if agree:
            self._shadow_agreements.add(key)

    def record_shadow_drop(self, model: str, version: str, primary_version: str) -> None:
        """Count a shadow ticket refused at admission."""
        self._shadow_drops.add((model, version, primary_version))

    def record_shadow_timeout(self, model: str, version: str, primary_version: str) -> None:
        """Count a shadow run that exceeded its timeout."""
        self._shadow_timeouts.add((model, version, primary_version))

    def record_shadow_error(self, model: str, version: str, primary_version: str) -> None:
        """Count a shadow run that raised."""
        self._shadow_errors.add((model, version, primary_version))

    def record_flag_evaluation(self, flag: str, variant: str, reason: str) -> None:
        """Count a flag evaluation (reason as flagd reports it, e.g. TARGETING_MATCH, SPLIT)."""
        self._flag_evaluations.add((flag, variant, reason))

    def _readings(self) -> list[RolloutReading]:
        if self._rollouts is None:
            return []
        try:
            return list(self._rollouts())
        except Exception:  # a broken source must not break the whole collection
            _log.exception("rollout gauge source failed")
            return []

    def _observe_stage(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.stage_index, _gauge_attributes(r, stage=True))
            for r in self._readings()
            if r.stage is not None
        ]

    def _observe_weight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.canary_weight, _gauge_attributes(r, stage=False)) for r in self._readings()]


def _gauge_attributes(reading: RolloutReading, *, stage: bool) -> Mapping[str, str]:
    attributes = {"model": reading.model, "candidate": reading.candidate}
    if stage and reading.stage is not None:
        attributes["stage"] = reading.stage
    return attributes
