"""The telemetry feature: spans and metrics per model version and route reason, and `/metrics`.

Wiring (see `server/app.py` Feature):

- `TelemetryMiddleware` (outermost): a SERVER span per HTTP request, continuing `traceparent`.
- an inference observer (runs after the response is sent, while the server span is still current):
  an `infer <model>` child span with explicit timestamps (model, version, slot, role, route reason,
  batch size, input shapes) and the request metrics by model/version/role/reason. Metrics are
  recorded here only (the middleware gets no `Metrics`), so every inference counts once, including
  versions pinned in the URL and `ModelServe.predict` calls.
- `/metrics`: Prometheus text from a `PrometheusReader` attached to the SDK MeterProvider passed in
  (or the global one when that is an SDK provider); with none, a private SDK provider is built, so
  `/metrics` works out of the box. A non-SDK provider passed in (e.g. no-op) means no `/metrics`.
- flag evaluations counted by flag/variant/reason (hooked on `services.router` at startup); rollout
  stage and canary weight gauges read from `services.policies` and `services.rollout` at scrape time.

For the other features, `services.telemetry` (a `TelemetryService`) offers `request_span_context`,
`on_shadow_result`, `record_shadow_drop` and `record_event`. Providers are never set globally.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio
from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.trace import SpanContext
from opentelemetry.util.types import AttributeValue
from starlette.middleware import Middleware
from starlette.routing import Route

from modelserve.middleware.telemetry import SERVED_KEY, SLOT_KEY, TelemetryMiddleware
from modelserve.server.app import Feature, FeatureInstaller, Services
from modelserve.server.inference import InferenceRecord
from modelserve.telemetry.metrics import Metrics, RolloutReading
from modelserve.telemetry.prometheus import PrometheusReader, metrics_app
from modelserve.telemetry.spans import ROLE_PRIMARY, Tracing

if TYPE_CHECKING:
    from modelserve.routing.flagd import Evaluation
    from modelserve.telemetry.exporters import TelemetryProviders

log = logging.getLogger("modelserve.telemetry")

#: Scope key where the observer leaves the request span's `SpanContext` (see `request_span_context`).
SPAN_CONTEXT_KEY = "modelserve.span_context"
METRICS_PATH = "/metrics"


class ShadowOutcome(Protocol):
    """What `on_shadow_result` reads; `modelserve.shadow.runner.ShadowResult` has these fields."""

    @property
    def model(self) -> str: ...
    @property
    def primary_version(self) -> str: ...
    @property
    def shadow_version(self) -> str: ...
    @property
    def request_id(self) -> str | None: ...
    @property
    def context(self) -> object: ...  # the SpanContext from `request_span_context`, or None
    @property
    def comparison(self) -> Any: ...  # has `.agree`, `.agreement`, `.reason`; None on error/timeout
    @property
    def error(self) -> str | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def start_time_ns(self) -> int | None: ...
    @property
    def end_time_ns(self) -> int: ...


class TelemetryService:
    """`services.telemetry`: the app's `Tracing` and `Metrics`, and hooks for other features."""

    def __init__(
        self, services: Services, *, tracing: Tracing, metrics: Metrics, prometheus: PrometheusReader | None
    ) -> None:
        self.services = services
        self.tracing = tracing
        self.metrics = metrics
        self.prometheus = prometheus

    # -- request path --------------------------------------------------------------------------

    def observe(self, record: InferenceRecord) -> None:
        """Inference observer: request metrics, and the inference span under the request span."""
        decision = record.decision
        model, version = record.model, decision.version
        self.metrics.record_request(
            model, version, ROLE_PRIMARY, decision.reason, record.latency_s, record.status >= 500
        )
        if not self.tracing.enabled:
            return
        end_ns = time.time_ns()
        scope = record.scope
        slots = self.services.registry.models.get(model)
        slot = slots.slot_of(version) if slots is not None else None
        # Leave what served the request for the middleware's span attributes (pinned versions too).
        served = scope.get(SERVED_KEY)
        if not isinstance(served, dict):
            served = scope[SERVED_KEY] = {}
        served[model] = decision
        if slot is not None:
            slot_map = scope.get(SLOT_KEY)
            if not isinstance(slot_map, dict):
                slot_map = scope[SLOT_KEY] = {}
            slot_map[model] = slot
        span_context = Tracing.current_span_context()
        if span_context is not None:
            scope[SPAN_CONTEXT_KEY] = span_context
        self.tracing.record_inference(
            start_ns=end_ns - int(record.latency_s * 1e9),
            end_ns=end_ns,
            model=model,
            version=version,
            reason=decision.reason,
            slot=slot,
            inputs=record.inputs,
            error=record.error if record.status >= 500 else None,
        )

    @staticmethod
    def request_span_context(record: InferenceRecord) -> SpanContext | None:
        """The request span's context, to pass along and link a shadow span to later.

        Call from an observer (on the event loop); the value can then travel to any thread. None when
        tracing is off or the request is not traced.
        """
        stored = record.scope.get(SPAN_CONTEXT_KEY)
        return stored if isinstance(stored, SpanContext) else Tracing.current_span_context()

    # -- hooks for shadow, rollout and routing ------------------------------------------------------

    def on_shadow_result(self, result: ShadowOutcome) -> None:
        """Count a settled shadow run and record its span, linked to `result.context`. Thread-safe.

        Usable as `ShadowRunner(on_result=services.telemetry.on_shadow_result)`: pass the request's
        `request_span_context(record)` as the run's `context`. Outcome: timeout if `timed_out`, error
        if `error`, else compared (agreement from `comparison.agree`).
        """
        model, version, primary = result.model, result.shadow_version, result.primary_version
        comparison = result.comparison
        agree: bool | None = None
        if result.timed_out:
            outcome, detail = "timeout", result.error or "timed out"
            self.metrics.record_shadow_timeout(model, version, primary)
        elif result.error is not None or comparison is None:
            outcome, detail = "error", result.error or "no result"
            self.metrics.record_shadow_error(model, version, primary)
        else:
            outcome, agree = "compared", bool(comparison.agree)
            detail = str(getattr(comparison, "reason", ""))
            self.metrics.record_shadow_comparison(model, version, primary, agree)
        if not self.tracing.enabled:
            return
        extra: dict[str, AttributeValue] = {}
        if comparison is not None:
            extra["modelserve.shadow.agreement"] = float(getattr(comparison, "agreement", float(agree or 0)))
        if result.request_id is not None:
            extra["modelserve.request_id"] = result.request_id
        slots = self.services.registry.models.get(model)
        link = result.context if isinstance(result.context, SpanContext) else None
        self.tracing.record_shadow(
            link,
            start_ns=result.start_time_ns if result.start_time_ns is not None else result.end_time_ns,
            end_ns=result.end_time_ns,
            model=model,
            version=version,
            primary_version=primary,
            outcome=outcome,
            agree=agree,
            detail=detail,
            slot=slots.slot_of(version) if slots is not None else None,
            attributes=extra,
        )

    def record_shadow_drop(self, model: str, version: str, primary_version: str) -> None:
        """Count a shadow run refused at admission (e.g. `ShadowRunner.submit` returned False)."""
        self.metrics.record_shadow_drop(model, version, primary_version)

    def record_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """A rollout decision (promote, pause, rollback...) with its evidence, as a span event.

        On the current span when one records (an admin request), else on a short root span
        `modelserve.rollout`. Nested mappings become dotted keys; include `model` for the span.
        """
        self.tracing.record_event(name, attributes)

    def on_flag_evaluation(self, model: str, evaluation: Evaluation) -> None:
        """`Router.on_flag_evaluation`: count evaluations by flag, variant and reason."""
        self.metrics.record_flag_evaluation(evaluation.flag_key, evaluation.variant or "", evaluation.reason)

    def rollout_readings(self) -> list[RolloutReading]:
        """Per loaded model: canary weight from its policy, stage from an active rollout if any."""
        status_of = _rollout_status_function(self.services.rollout)
        readings = []
        for model in list(self.services.registry.models):
            policy = self.services.policies.get(model)
            if policy is None:
                continue
            stage: str | None = None
            stage_index = 0
            status = status_of(model) if status_of is not None else None
            if status is not None and getattr(status, "active", False):
                stage, stage_index = str(status.stage), int(status.stage_index)
            readings.append(
                RolloutReading(
                    model=model,
                    stage=stage,
                    stage_index=stage_index,
                    canary_weight=policy.canary_weight / 100.0,
                    candidate=policy.candidate or "",
                )
            )
        return readings

    def attach_router(self) -> None:
        """Count flag evaluations of `services.router` (chained after any hook already set)."""
        router = self.services.router
        if router is None:
            return
        previous = router.on_flag_evaluation
        if previous is None:
            router.on_flag_evaluation = self.on_flag_evaluation
            return

        def both(model: str, evaluation: Evaluation) -> None:
            previous(model, evaluation)
            self.on_flag_evaluation(model, evaluation)

        router.on_flag_evaluation = both


def _rollout_status_function(rollout: object) -> Any:
    """`status(model)` of the rollout controller (or service) when one is installed."""
    if rollout is None:
        return None
    for holder in (getattr(rollout, "controller", None), rollout):
        status = getattr(holder, "status", None)
        if callable(status):
            return status
    return None


def meter_setup(
    meter_provider: otel_metrics.MeterProvider | None,
) -> tuple[otel_metrics.MeterProvider, PrometheusReader | None]:
    """The provider to record on and the reader serving `/metrics` (None: no `/metrics`).

    An SDK provider (passed in, else the global one) gets a `PrometheusReader` attached; with
    neither, a private SDK provider is built around one. Nothing global is set.
    """
    provider = meter_provider if meter_provider is not None else otel_metrics.get_meter_provider()
    if isinstance(provider, SdkMeterProvider):
        reader = PrometheusReader()
        reader.attach(provider)
        return provider, reader
    if meter_provider is None:
        reader = PrometheusReader()
        return SdkMeterProvider(metric_readers=[reader]), reader
    log.info("meter provider %s is not the OTel SDK's: %s not served", type(provider).__name__, METRICS_PATH)
    return provider, None


def install(services: Services) -> Feature:
    provider, reader = meter_setup(services.meter_provider)
    tracing = Tracing(services.tracer_provider)
    # With only our private provider (no exporter but `/metrics`), latency skips the SDK's costly path.
    private = (
        services.meter_provider is None
        and reader is not None
        and provider is not otel_metrics.get_meter_provider()
    )
    metrics = Metrics(provider, sdk_histogram=not private)
    if private and reader is not None:
        reader.local_metrics = metrics.local_metrics
    telemetry = TelemetryService(services, tracing=tracing, metrics=metrics, prometheus=reader)
    telemetry.metrics.set_rollout_source(telemetry.rollout_readings)
    services.telemetry = telemetry

    async def attach_router() -> None:  # the routing feature is installed after this one
        telemetry.attach_router()

    return Feature(
        name="telemetry",
        routes=[Route(METRICS_PATH, metrics_app(reader))] if reader is not None else [],
        # Metrics are recorded by the observer, once per inference: the middleware does spans only.
        middleware=[Middleware(TelemetryMiddleware, tracing=tracing, metrics=None)],
        observers=[telemetry.observe],
        startup=[attach_router],
    )


def shutdown_providers(providers: TelemetryProviders) -> FeatureInstaller:
    """A feature that flushes and stops `providers` at server shutdown (list it first: it runs last)."""

    def install_shutdown(services: Services) -> Feature:
        async def shutdown() -> None:
            await anyio.to_thread.run_sync(providers.shutdown)  # flushing exporters blocks

        return Feature(name="telemetry-providers", shutdown=[shutdown])

    return install_shutdown
