"""Prometheus text exposition of the OTel instruments, with no dependency beyond the OTel SDK.

`PrometheusReader` is a pull `MetricReader`: registered on the SDK MeterProvider (at construction,
or later with `attach`), it collects on each scrape and renders the text format 0.0.4 itself.
Names follow the OTel -> Prometheus compatibility rules: dots become underscores, the unit is
appended (`s` -> `_seconds`; `{annotations}` are dropped), monotonic sums get `_total`.
`metrics_app(reader)` is the pure ASGI app to mount at `/metrics`.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry.sdk import metrics as sdk_metrics
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    ExponentialHistogram,
    Gauge,
    Histogram,
    Metric,
    MetricReader,
    MetricsData,
    Sum,
)

_log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_:]+")
_INVALID_LABEL_CHARS = re.compile(r"[^a-zA-Z0-9_]+")
_UNIT_SUFFIXES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "By": "bytes"}


# Prometheus counters and histograms are cumulative; ask for that explicitly from every instrument.
_INSTRUMENT_TYPES: tuple[type, ...] = (
    sdk_metrics.Counter,
    sdk_metrics.UpDownCounter,
    sdk_metrics.Histogram,
    sdk_metrics.ObservableCounter,
    sdk_metrics.ObservableUpDownCounter,
    sdk_metrics.ObservableGauge,
)


class PrometheusReader(MetricReader):
    """A pull reader that renders the provider's metrics as Prometheus text on each call."""

    def __init__(self, *, local_metrics: Callable[[], Iterable[Metric]] | None = None) -> None:
        super().__init__(
            preferred_temporality=dict.fromkeys(_INSTRUMENT_TYPES, AggregationTemporality.CUMULATIVE)
        )
        self._lock = threading.Lock()
        self._collected: MetricsData | None = None
        #: Metrics kept outside the SDK (see `Metrics.local_metrics`), rendered after the SDK's.
        self.local_metrics = local_metrics

    def attach(self, meter_provider: sdk_metrics.MeterProvider) -> None:
        """Register on a MeterProvider built elsewhere (e.g. passed in by the embedding app)."""
        meter_provider.add_metric_reader(self)

    def _receive_metrics(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> None:
        self._collected = metrics_data

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        """Nothing to flush: data is pulled."""

    def exposition(self) -> tuple[bytes, str]:
        """Collect now and return `(body, content_type)` for a `/metrics` response."""
        with self._lock:  # one collection at a time; scrapes are rare
            self.collect()
            data, self._collected = self._collected, None
        extra = list(self.local_metrics()) if self.local_metrics is not None else []
        return render(data, extra).encode(), CONTENT_TYPE


class MetricsEndpoint:
    """Pure ASGI app serving a reader's exposition on GET/HEAD; 405 otherwise.

    A class, not a function, so that Starlette's `Route` mounts it as an ASGI app rather than
    wrapping it as a request/response handler.
    """

    def __init__(self, reader: PrometheusReader) -> None:
        self.reader = reader

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET, HEAD")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body, content_type = self.reader.exposition()
        headers = [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def metrics_app(reader: PrometheusReader) -> MetricsEndpoint:
    """The pure ASGI app to mount at `/metrics` for `reader`."""
    return MetricsEndpoint(reader)


def render(data: MetricsData | None, extra: Iterable[Metric] = ()) -> str:
    """Render collected OTel metrics (and `extra` ones kept outside the SDK) as Prometheus text 0.0.4."""
    families: dict[str, tuple[str, str, list[str]]] = {}
    target_labels: dict[str, str] = {}
    collected: list[Metric] = []
    for resource_metrics in data.resource_metrics if data is not None else ():
        for key, value in resource_metrics.resource.attributes.items():
            target_labels[_label_name(key)] = str(value)
        for scope_metrics in resource_metrics.scope_metrics:
            collected.extend(scope_metrics.metrics)
    for metric in [*collected, *extra]:
        kind, name = _family(metric.name, metric.unit or "", metric.data)
        if kind is None:
            continue
        family = families.setdefault(name, (kind, metric.description or "", []))
        if family[0] != kind:
            _log.warning("metric %s exported as %s and %s; keeping the first", name, family[0], kind)
            continue
        family[2].extend(_samples(name, metric.data))
    lines: list[str] = []
    if target_labels:
        lines += ["# HELP target_info Target metadata", "# TYPE target_info gauge"]
        lines.append(f"target_info{_labels(target_labels)} 1")
    for name, (kind, description, samples) in families.items():
        lines.append(f"# HELP {name} {_escape_help(description)}")
        lines.append(f"# TYPE {name} {kind}")
        lines.extend(samples)
    return "\n".join(lines) + "\n" if lines else ""


def _family(name: str, unit: str, data: object) -> tuple[str | None, str]:
    base = _INVALID_NAME_CHARS.sub("_", name).strip("_")
    if isinstance(data, Sum):
        kind = "counter" if data.is_monotonic else "gauge"
    elif isinstance(data, Gauge):
        kind = "gauge"
    elif isinstance(data, Histogram):
        kind = "histogram"
    else:  # exponential histograms have no text-format equivalent
        return None, base
    suffix = _unit_suffix(unit, gauge=kind == "gauge")
    if suffix and not base.endswith(f"_{suffix}"):
        base = f"{base}_{suffix}"
    if kind == "counter" and not base.endswith("_total"):
        base = f"{base}_total"
    return kind, base


def _unit_suffix(unit: str, *, gauge: bool) -> str:
    unit = re.sub(r"\{[^}]*\}", "", unit).strip()
    if unit == "1":
        return "ratio" if gauge else ""
    return _INVALID_LABEL_CHARS.sub("_", _UNIT_SUFFIXES.get(unit, unit)).strip("_")


def _samples(name: str, data: Sum | Gauge | Histogram | ExponentialHistogram) -> Iterable[str]:
    if isinstance(data, Histogram):
        for point in data.data_points:
            labels = _label_dict(point.attributes)
            cumulative = 0
            for bound, count in zip(point.explicit_bounds, point.bucket_counts, strict=False):
                cumulative += count
                yield f"{name}_bucket{_labels({**labels, 'le': _number(float(bound))})} {cumulative}"
            yield f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {point.count}"
            yield f"{name}_sum{_labels(labels)} {_number(point.sum)}"
            yield f"{name}_count{_labels(labels)} {point.count}"
        return
    if isinstance(data, ExponentialHistogram):
        return
    for number_point in data.data_points:
        yield f"{name}{_labels(_label_dict(number_point.attributes))} {_number(number_point.value)}"


def _label_dict(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    if not attributes:
        return {}
    return {_label_name(key): _label_value(value) for key, value in attributes.items()}


def _label_name(key: str) -> str:
    name = _INVALID_LABEL_CHARS.sub("_", key)
    return f"_{name}" if name[:1].isdigit() else name


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(str(item) for item in value)
    return str(value)


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape_value(value)}"' for key, value in labels.items())
    return "{" + inner + "}"


def _escape_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
