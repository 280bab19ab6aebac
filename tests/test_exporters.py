from __future__ import annotations

import importlib

import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from modelserve.errors import ConfigError
from modelserve.telemetry.exporters import build_providers_from_env
from modelserve.telemetry.metrics import Metrics
from modelserve.telemetry.prometheus import MetricsCollector


def otlp_installed() -> bool:
    try:
        importlib.import_module("opentelemetry.exporter.otlp.proto.http")
    except ImportError:
        return False
    return True


OTLP_INSTALLED = otlp_installed()


def test_defaults_trace_nothing_export_no_metrics_and_metrics_still_reach_prometheus() -> None:
    providers = build_providers_from_env({})
    assert isinstance(providers.tracer_provider, trace.NoOpTracerProvider)
    assert isinstance(providers.meter_provider, MeterProvider)
    assert providers.metric_exporters == ()  # so `modelserve serve` records no OTel metrics
    metrics = Metrics(providers.meter_provider)
    metrics.record_request("fraud", "1", "primary", "stable", 0.001, False)
    (requests, *_) = MetricsCollector(metrics).collect()
    assert requests.name == "modelserve_requests" and requests.samples[0].value == 1
    providers.shutdown()


def test_console_traces_with_service_name_and_resource_attributes() -> None:
    providers = build_providers_from_env(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_SERVICE_NAME": "fraud-api",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=staging,team=risk%20ops",
        }
    )
    assert isinstance(providers.tracer_provider, TracerProvider)
    attributes = dict(providers.tracer_provider.resource.attributes)
    assert attributes == {
        "service.name": "fraud-api",
        "deployment.environment": "staging",
        "team": "risk ops",
    }
    providers.shutdown()


def test_sdk_disabled_gives_noop_providers() -> None:
    providers = build_providers_from_env({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "console"})
    assert isinstance(providers.tracer_provider, trace.NoOpTracerProvider)
    assert isinstance(providers.meter_provider, metrics.NoOpMeterProvider)


def test_traceidratio_sampler_is_read_from_the_mapping() -> None:
    providers = build_providers_from_env(
        {
            "OTEL_TRACES_EXPORTER": "console",
            "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.25",
        }
    )
    assert isinstance(providers.tracer_provider, TracerProvider)
    assert "0.25" in providers.tracer_provider.sampler.get_description()
    providers.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER='zipkin' is not supported"),
        ({"OTEL_METRICS_EXPORTER": "statsd"}, "OTEL_METRICS_EXPORTER='statsd' is not supported"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_EXPORTER": "console", "OTEL_TRACES_SAMPLER_ARG": "2"}, "between 0 and 1"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "key=value"),
        ({"OTEL_METRIC_EXPORT_INTERVAL": "soon"}, "not a number"),
        (
            {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            "modelserve exports OTLP over http/protobuf",
        ),
    ],
)
def test_bad_values_raise_config_error(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_providers_from_env(environ)


@pytest.mark.parametrize("var", ["OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER"])
def test_otlp_is_built_with_the_extra_or_explains_how_to_install_it(var: str) -> None:
    environ = {var: "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/"}
    if not OTLP_INSTALLED:
        with pytest.raises(ConfigError, match=r"pip install 'modelserve\[otlp\]'"):
            build_providers_from_env(environ)
        return
    providers = build_providers_from_env(environ)
    assert isinstance(providers.meter_provider, MeterProvider)
    providers.shutdown()
