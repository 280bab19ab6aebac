"""Tracer and meter providers configured from the standard `OTEL_*` variables.

Only `cli.py` reads `os.environ`; it passes the mapping to `build_providers_from_env`, which builds
providers without touching any global. Understood variables:

    OTEL_SDK_DISABLED                      "true": no-op providers (and so no /metrics)
    OTEL_SERVICE_NAME                      service.name (default "modelserve")
    OTEL_RESOURCE_ATTRIBUTES               k=v,k=v resource attributes
    OTEL_TRACES_EXPORTER                   console | otlp | none (default none; comma list allowed)
    OTEL_METRICS_EXPORTER                  console | otlp | prometheus | none (default prometheus)
    OTEL_TRACES_SAMPLER[_ARG]              always_on | always_off | traceidratio | parentbased_*
    OTEL_EXPORTER_OTLP_ENDPOINT            base URL, e.g. http://collector:4318 (+ /v1/traces, ...)
    OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT   full per-signal URLs
    OTEL_EXPORTER_OTLP_HEADERS             k=v,k=v
    OTEL_EXPORTER_OTLP_PROTOCOL            only http/protobuf is supported
    OTEL_METRIC_EXPORT_INTERVAL            push interval in ms (default 60000)

`/metrics` is served by `prometheus_client` whatever `OTEL_METRICS_EXPORTER` says (`prometheus`, the
default, means just that); `otlp` and `console` add a periodic push reader to the SDK `MeterProvider`,
which `modelserve serve` then passes to the app (OTel metrics are recorded only when exported).
OTLP is imported only when asked for; it comes with the `otlp` extra.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from modelserve.errors import ConfigError

_TRACE_EXPORTERS = ("console", "otlp", "none")
_METRIC_EXPORTERS = ("console", "otlp", "prometheus", "none")
_OTLP_MISSING = "{var}=otlp needs the OTLP exporter: install it with pip install 'modelserve[otlp]'"


@dataclass(frozen=True, slots=True, kw_only=True)
class TelemetryProviders:
    """Providers to pass to `create_app` (as `tracer_provider=`, `meter_provider=`)."""

    tracer_provider: trace.TracerProvider
    meter_provider: metrics.MeterProvider
    #: Metric exporters besides `/metrics` ("console", "otlp"); none means the provider has no reader.
    metric_exporters: tuple[str, ...] = ()

    def shutdown(self) -> None:
        """Flush and stop exporters (call once, at server shutdown)."""
        if isinstance(self.tracer_provider, TracerProvider):
            self.tracer_provider.shutdown()
        if isinstance(self.meter_provider, MeterProvider):
            self.meter_provider.shutdown()


def build_providers_from_env(environ: Mapping[str, str]) -> TelemetryProviders:
    """Build providers from `OTEL_*` variables in `environ`; raise `ConfigError` on a bad value."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TelemetryProviders(
            tracer_provider=trace.NoOpTracerProvider(),
            meter_provider=metrics.NoOpMeterProvider(),
        )
    resource = _resource(environ)
    trace_exporters = _choices(environ, "OTEL_TRACES_EXPORTER", "none", _TRACE_EXPORTERS)
    metric_exporters = _choices(environ, "OTEL_METRICS_EXPORTER", "prometheus", _METRIC_EXPORTERS)
    if "otlp" in trace_exporters or "otlp" in metric_exporters:
        _check_protocol(environ)

    tracer_provider: trace.TracerProvider
    if trace_exporters:
        sdk_tracer_provider = TracerProvider(resource=resource, sampler=_sampler(environ))
        for name in trace_exporters:
            exporter = ConsoleSpanExporter() if name == "console" else _otlp_span_exporter(environ)
            sdk_tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
        tracer_provider = sdk_tracer_provider
    else:
        tracer_provider = trace.NoOpTracerProvider()

    readers: list[MetricReader] = []
    interval_ms = _float(environ, "OTEL_METRIC_EXPORT_INTERVAL", 60_000.0)
    for name in metric_exporters:
        if name in ("console", "otlp"):
            metric_exporter = ConsoleMetricExporter() if name == "console" else _otlp_metric_exporter(environ)
            readers.append(PeriodicExportingMetricReader(metric_exporter, export_interval_millis=interval_ms))
    meter_provider = MeterProvider(metric_readers=readers, resource=resource)
    return TelemetryProviders(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        metric_exporters=tuple(metric_exporters),
    )


def _choices(environ: Mapping[str, str], var: str, default: str, allowed: tuple[str, ...]) -> list[str]:
    names = [name.strip().lower() for name in environ.get(var, default).split(",") if name.strip()]
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{var}={name!r} is not supported; use one of {', '.join(allowed)}")
    return [name for name in names if name not in ("none", "prometheus")]


def _resource(environ: Mapping[str, str]) -> Resource:
    # Resource.create() would read os.environ itself; build it from the mapping we were given.
    attributes: dict[str, Any] = _pairs(
        environ.get("OTEL_RESOURCE_ATTRIBUTES", ""), "OTEL_RESOURCE_ATTRIBUTES"
    )
    attributes["service.name"] = environ.get("OTEL_SERVICE_NAME") or attributes.get(
        "service.name", "modelserve"
    )
    return Resource(attributes)


def _pairs(text: str, var: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{var}: expected key=value pairs separated by commas, got {item!r}")
        pairs[unquote(key.strip())] = unquote(value.strip())
    return pairs


def _float(environ: Mapping[str, str], var: str, default: float) -> float:
    text = environ.get(var, "").strip()
    if not text:
        return default
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{var}={text!r} is not a number") from None


def _sampler(environ: Mapping[str, str]) -> Sampler:
    name = environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    ratio = _float(environ, "OTEL_TRACES_SAMPLER_ARG", 1.0)
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError(f"OTEL_TRACES_SAMPLER_ARG={ratio} must be between 0 and 1")
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": TraceIdRatioBased(ratio),
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(TraceIdRatioBased(ratio)),
    }
    try:
        return samplers[name]
    except KeyError:
        raise ConfigError(
            f"OTEL_TRACES_SAMPLER={name!r} is not supported; use one of {', '.join(samplers)}"
        ) from None


def _check_protocol(environ: Mapping[str, str]) -> None:
    for var in (
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    ):
        protocol = environ.get(var, "http/protobuf").strip()
        if protocol != "http/protobuf":
            raise ConfigError(
                f"{var}={protocol!r} is not supported; modelserve exports OTLP over http/protobuf"
            )


def _endpoint(environ: Mapping[str, str], signal: str) -> str | None:
    specific = environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    return f"{base.rstrip('/')}/v1/{signal}" if base else None


def _otlp_options(environ: Mapping[str, str], signal: str) -> dict[str, Any]:
    return {
        "endpoint": _endpoint(environ, signal) or f"http://localhost:4318/v1/{signal}",
        "headers": _pairs(environ.get("OTEL_EXPORTER_OTLP_HEADERS", ""), "OTEL_EXPORTER_OTLP_HEADERS"),
    }


def _otlp_span_exporter(environ: Mapping[str, str]) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise ConfigError(_OTLP_MISSING.format(var="OTEL_TRACES_EXPORTER")) from exc
    return OTLPSpanExporter(**_otlp_options(environ, "traces"))


def _otlp_metric_exporter(environ: Mapping[str, str]) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    except ImportError as exc:
        raise ConfigError(_OTLP_MISSING.format(var="OTEL_METRICS_EXPORTER")) from exc
    return OTLPMetricExporter(**_otlp_options(environ, "metrics"))
