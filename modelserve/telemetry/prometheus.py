"""`/metrics`: Prometheus text exposition through `prometheus_client`.

The composition root owns one `CollectorRegistry`; `MetricsCollector` reads modelserve's tallies
(`telemetry/metrics.py`) on each scrape, and any other part of the server (or an embedding app) can
register its own `prometheus_client` collectors on the same registry. `metrics_app(registry)` is the
pure ASGI app mounted at `/metrics`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from modelserve.telemetry.metrics import (
    CANARY_WEIGHT_FAMILY,
    DURATION_FAMILY,
    ROLLOUT_STAGE_FAMILY,
    Metrics,
    gauge_labels,
)

#: The classic text format, which every Prometheus-compatible scraper reads.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class MetricsCollector:
    """A `prometheus_client` collector over a `Metrics`' tallies and rollout gauges."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # nothing is collected at registration time

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        for name, description, tally in metrics.counters:
            counter = CounterMetricFamily(name, description, labels=tally.names)
            for labels, value in tally.items():
                counter.add_metric(labels, value)
            yield counter
        latency = metrics.latency
        histogram = HistogramMetricFamily(DURATION_FAMILY, "Request latency", labels=latency.names)
        edges = [*(repr(float(bound)) for bound in latency.bounds), "+Inf"]
        for series in latency.series():
            buckets = list(zip(edges, series.cumulative_counts, strict=True))
            histogram.add_metric(series.labels, buckets, sum_value=series.total)
        yield histogram
        readings = metrics.readings()
        stage = GaugeMetricFamily(
            ROLLOUT_STAGE_FAMILY, "Rollout stage index", labels=("model", "candidate", "stage")
        )
        weight = GaugeMetricFamily(
            CANARY_WEIGHT_FAMILY,
            "Fraction of traffic sent to the candidate version",
            labels=("model", "candidate"),
        )
        for reading in readings:
            if reading.stage is not None:
                stage.add_metric(list(gauge_labels(reading, stage=True).values()), reading.stage_index)
            weight.add_metric(list(gauge_labels(reading, stage=False).values()), reading.canary_weight)
        yield stage
        yield weight


class MetricsEndpoint:
    """Pure ASGI app serving a registry's exposition on GET/HEAD; 405 otherwise.

    A class, not a function, so that Starlette's `Route` mounts it as an ASGI app rather than
    wrapping it as a request/response handler.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    async def __call__(self, scope: Mapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] not in ("GET", "HEAD"):
            await send({"type": "http.response.start", "status": 405, "headers": [(b"allow", b"GET, HEAD")]})
            await send({"type": "http.response.body", "body": b""})
            return
        body = generate_latest(self.registry)
        headers = [(b"content-type", CONTENT_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def metrics_app(registry: CollectorRegistry) -> MetricsEndpoint:
    """The pure ASGI app to mount at `/metrics` for `registry`."""
    return MetricsEndpoint(registry)
