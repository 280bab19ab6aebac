"""modelserve's metrics: cheap local tallies, exposed to Prometheus and, when exporting, to OTel.

Every series is labelled by a bounded set of values: model, version, role and route reason for
requests; model, shadow version and primary version for shadow comparisons; flag, variant and reason
for flag evaluations. A targeting key or request id is never a label.

Recording is a locked dict increment (well under 1 µs). `/metrics` reads the tallies through a
`prometheus_client` collector (`telemetry/prometheus.py`); only when an OTel MeterProvider is passed
in (an exporter is configured) are OTel instruments registered, reading the same tallies, plus the SDK
latency histogram (~10 µs a request), since OTel has no observable histogram.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from modelserve.telemetry.histogram import LogHistogram

_log = logging.getLogger(__name__)

METER_NAME = "modelserve"

REQUESTS = "modelserve.requests"
ERRORS = "modelserve.errors"
REQUEST_DURATION = "modelserve.request.duration"
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

    __slots__ = ("_cache", "names")

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self._cache: dict[tuple[str, ...], dict[str, str]] = {}

    def get(self, values: tuple[str, ...]) -> dict[str, str]:
        attributes = self._cache.get(values)
        if attributes is None:
            attributes = dict(zip(self.names, values, strict=True))
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

    @property
    def names(self) -> tuple[str, ...]:
        return self._labels.names

    def items(self) -> list[tuple[tuple[str, ...], int]]:
        """A snapshot of `(label values, count)`."""
        with self._lock:
            return list(self._counts.items())

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, self._labels.get(key)) for key, value in self.items()]


@dataclass(frozen=True, slots=True)
class LatencySeries:
    """One label tuple's latency histogram for Prometheus: cumulative counts at each bound, then +Inf."""

    labels: tuple[str, ...]
    cumulative_counts: tuple[int, ...]
    total: float
    count: int


class _LatencyTally:
    """A `LogHistogram` per label tuple (one log and one dict update a request), read at scrape time."""

    __slots__ = ("_histograms", "_lock", "bounds", "names")

    def __init__(self, names: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.names = names
        self.bounds = bounds  # the Prometheus bucket bounds the histograms are exposed at
        self._histograms: dict[tuple[str, ...], LogHistogram] = {}
        self._lock = threading.Lock()

    def add(self, key: tuple[str, ...], value: float) -> None:
        with self._lock:
            histogram = self._histograms.get(key)
            if histogram is None:
                histogram = self._histograms[key] = LogHistogram()
            histogram.add(value)

    def series(self) -> list[LatencySeries]:
        """A snapshot of every label tuple's histogram at the Prometheus bounds."""
        with self._lock:
            return [
                LatencySeries(key, tuple(h.cumulative_counts(self.bounds)), h.total, h.count)
                for key, h in self._histograms.items()
            ]


#: Counter families: (OTel name, Prometheus name without `_total`, OTel unit, description).
COUNTERS: tuple[tuple[str, str, str, str], ...] = (
    (REQUESTS, "modelserve_requests", "{request}", "Inference requests"),
    (ERRORS, "modelserve_errors", "{request}", "Inference requests that failed (status >= 500)"),
    (SHADOW_COMPARISONS, "modelserve_shadow_comparisons", "{comparison}", "Shadow results compared"),
    (SHADOW_AGREEMENTS, "modelserve_shadow_agreements", "{comparison}", "Shadow results that agreed"),
    (SHADOW_DROPS, "modelserve_shadow_drops", "{ticket}", "Shadow runs dropped (pool full or shed)"),
    (SHADOW_TIMEOUTS, "modelserve_shadow_timeouts", "{ticket}", "Shadow runs that timed out"),
    (SHADOW_ERRORS, "modelserve_shadow_errors", "{ticket}", "Shadow runs that raised"),
    (FLAG_EVALUATIONS, "modelserve_flag_evaluations", "{evaluation}", "Flag evaluations by variant, reason"),
)
DURATION_FAMILY = "modelserve_request_duration_seconds"
ROLLOUT_STAGE_FAMILY = "modelserve_rollout_stage"
CANARY_WEIGHT_FAMILY = "modelserve_canary_weight_ratio"


class Metrics:
    """modelserve's tallies, and OTel instruments over them on the meter provider passed in (if any).

    `rollouts` is called at each collection to feed the rollout-stage and canary-weight gauges; it
    can also be set later with `set_rollout_source` once the rollout controller exists.
    """

    def __init__(
        self,
        meter_provider: metrics.MeterProvider | None = None,
        *,
        rollouts: Callable[[], Iterable[RolloutReading]] | None = None,
    ) -> None:
        request_labels = ("model", "version", "role", "route_reason")
        shadow_labels = ("model", "version", "primary_version")
        self.latency = _LatencyTally(request_labels, LATENCY_BUCKETS_S)
        self._rollouts = rollouts
        self._requests = _Tally(request_labels)
        self._errors = _Tally(request_labels)
        self._shadow_comparisons = _Tally(shadow_labels)
        self._shadow_agreements = _Tally(shadow_labels)
        self._shadow_drops = _Tally(shadow_labels)
        self._shadow_timeouts = _Tally(shadow_labels)
        self._shadow_errors = _Tally(shadow_labels)
        self._flag_evaluations = _Tally(("flag", "variant", "reason"))
        self._request_labels = _LabelCache(request_labels)
        tallies = (
            self._requests, self._errors, self._shadow_comparisons, self._shadow_agreements,
            self._shadow_drops, self._shadow_timeouts, self._shadow_errors, self._flag_evaluations,
        )  # fmt: skip
        #: (Prometheus family name, description, tally) of every counter, for `/metrics`.
        self.counters = [(prom, doc, t) for (_, prom, _, doc), t in zip(COUNTERS, tallies, strict=True)]
        self._duration: metrics.Histogram | None = None
        if meter_provider is not None:
            self._register_otel(meter_provider, tallies)

    def _register_otel(self, meter_provider: metrics.MeterProvider, tallies: tuple[_Tally, ...]) -> None:
        meter = metrics.get_meter(METER_NAME, meter_provider=meter_provider)
        for (name, _, unit, description), tally in zip(COUNTERS, tallies, strict=True):
            meter.create_observable_counter(
                name, callbacks=[tally.observe], unit=unit, description=description
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
        self.latency.add(key, latency_s)
        if self._duration is not None:
            self._duration.record(latency_s, self._request_labels.get(key))

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

    def readings(self) -> list[RolloutReading]:
        """The rollout gauges' readings now (empty when the source is missing or fails)."""
        if self._rollouts is None:
            return []
        try:
            return list(self._rollouts())
        except Exception:  # a broken source must not break the whole collection
            _log.exception("rollout gauge source failed")
            return []

    def _observe_stage(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(r.stage_index, gauge_labels(r, stage=True))
            for r in self.readings()
            if r.stage is not None
        ]

    def _observe_weight(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(r.canary_weight, gauge_labels(r, stage=False)) for r in self.readings()]


def gauge_labels(reading: RolloutReading, *, stage: bool) -> dict[str, str]:
    """The labels of a rollout gauge: model and candidate, and the stage for the stage gauge."""
    attributes = {"model": reading.model, "candidate": reading.candidate}
    if stage and reading.stage is not None:
        attributes["stage"] = reading.stage
    return attributes
