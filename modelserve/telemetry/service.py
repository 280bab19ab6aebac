"""`TelemetryService`: spans and metrics per model version and route reason, for every other service.

- `observe` (an inference observer, run after the response while the server span is still current):
  an `infer <model>` child span with explicit timestamps (model, version, slot, role, route reason,
  batch size, input shapes) and the request metrics by model/version/role/reason. Metrics are
  recorded here only, so every inference counts once, including versions pinned in the URL and
  `ModelServe.predict` calls.
- `on_shadow_result`: the one path a settled shadow run takes into telemetry (metrics, and a span
  linked to the request carrying request id, agreement, detail and slot).
- `on_flag_evaluation`, `record_shadow_drop`, `record_event` (rollout decisions as span events).

Providers are passed in and never set globally; OTel metrics only when exporting (see
`exporting_meter_provider`), `/metrics` always (through `prometheus_client`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from opentelemetry import metrics as otel_metrics
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.trace import SpanContext, TracerProvider
from opentelemetry.util.types import AttributeValue
from prometheus_client import CollectorRegistry

from modelserve.inference.path import InferenceRecord
from modelserve.routing.flagd import Evaluation
from modelserve.serving.registry import ModelRegistry
from modelserve.state.policies import PolicyTable
from modelserve.telemetry.metrics import Metrics, RolloutReading
from modelserve.telemetry.prometheus import MetricsCollector
from modelserve.telemetry.spans import ROLE_PRIMARY, SERVED_KEY, SLOT_KEY, Tracing

log = logging.getLogger("modelserve.telemetry")

#: Scope key where the observer leaves the request span's `SpanContext` (see `request_span_context`).
SPAN_CONTEXT_KEY = "modelserve.span_context"


class ShadowComparison(Protocol):
    """What telemetry reads of a shadow comparison (`shadow.compare.Comparison`)."""

    @property
    def agree(self) -> bool: ...
    @property
    def agreement(self) -> float: ...
    @property
    def rows(self) -> int: ...
    @property
    def agreeing_rows(self) -> int: ...
    @property
    def reason(self) -> str: ...


class ShadowOutcome(Protocol):
    """What `on_shadow_result` reads (`shadow.runner.ShadowResult`); telemetry sits below shadow."""

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
    def comparison(self) -> ShadowComparison | None: ...  # None on error or timeout
    @property
    def error(self) -> str | None: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def start_time_ns(self) -> int | None: ...
    @property
    def end_time_ns(self) -> int: ...


class RolloutProgress(Protocol):
    """What the rollout gauges read of a rollout's status (`rollout.events.RolloutStatus`)."""

    @property
    def active(self) -> bool: ...
    @property
    def stage(self) -> str: ...
    @property
    def stage_index(self) -> int: ...


class TelemetryService:
    """The app's `Tracing` and `Metrics`, and the hooks other services record through."""

    def __init__(
        self,
        *,
        tracing: Tracing,
        metrics: Metrics,
        registry: ModelRegistry,
    ) -> None:
        self.tracing = tracing
        self.metrics = metrics
        self.registry = registry

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
        slot = self._slot_of(model, version)
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

    def request_span_context(self, record: InferenceRecord) -> SpanContext | None:
        """The request span's context, to pass along and link a shadow span to later.

        Call from an observer (on the event loop); the value can then travel to any thread. None when
        tracing is off or the request is not traced.
        """
        stored = record.scope.get(SPAN_CONTEXT_KEY)
        return stored if isinstance(stored, SpanContext) else Tracing.current_span_context()

    # -- hooks for shadow, rollout and routing ------------------------------------------------------

    def on_shadow_result(self, result: ShadowOutcome) -> None:
        """Count a settled shadow run and record its span, linked to `result.context`. Thread-safe.

        Outcome: timeout if `timed_out`, error if `error`, else compared (agreement from `comparison`).
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
            detail = f"{comparison.agreeing_rows} of {comparison.rows} rows agree"
            if comparison.reason:
                detail += f"; {comparison.reason}"
            self.metrics.record_shadow_comparison(model, version, primary, agree)
        if not self.tracing.enabled:
            return
        extra: dict[str, AttributeValue] = {}
        if comparison is not None:
            extra["modelserve.shadow.agreement"] = float(comparison.agreement)
        if result.request_id is not None:
            extra["modelserve.request_id"] = result.request_id
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
            slot=self._slot_of(model, version),
            attributes=extra,
        )

    def record_shadow_drop(self, model: str, version: str, primary_version: str) -> None:
        """Count a shadow run refused at admission or shed."""
        self.metrics.record_shadow_drop(model, version, primary_version)

    def record_event(self, name: str, attributes: Mapping[str, object] | None = None) -> None:
        """A rollout decision (promote, pause, rollback...) with its evidence, as a span event.

        On the current span when one records (an admin request), else on a short root span
        `modelserve.rollout`. Nested mappings become dotted keys; include `model` for the span.
        """
        self.tracing.record_event(name, attributes)

    def on_flag_evaluation(self, model: str, evaluation: Evaluation) -> None:
        """`Router.on_flag_evaluation`: count evaluations by flag, variant and reason."""
        self.metrics.record_flag_evaluation(evaluation.flag_key, evaluation.variant or "", evaluation.reason)

    def _slot_of(self, model: str, version: str) -> str | None:
        slots = self.registry.models.get(model)
        return slots.slot_of(version) if slots is not None else None


def rollout_readings(
    registry: ModelRegistry,
    policies: PolicyTable,
    progress: Callable[[str], RolloutProgress | None] | None,
) -> list[RolloutReading]:
    """Per loaded model: canary weight from its policy, stage from an active rollout if any."""
    readings = []
    for model in list(registry.models):
        policy = policies.get(model)
        if policy is None:
            continue
        stage: str | None = None
        stage_index = 0
        status = progress(model) if progress is not None else None
        if status is not None and status.active:
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


def exporting_meter_provider(
    meter_provider: otel_metrics.MeterProvider | None,
) -> otel_metrics.MeterProvider | None:
    """The provider to export OTel metrics through: the one passed in, else the global one when an app
    configured the OTel SDK globally; None (the usual case for `modelserve serve`): no OTel metrics."""
    if meter_provider is not None:
        return meter_provider
    provider = otel_metrics.get_meter_provider()
    return provider if isinstance(provider, SdkMeterProvider) else None


def build_telemetry(
    registry: ModelRegistry,
    *,
    tracer_provider: TracerProvider | None,
    meter_provider: otel_metrics.MeterProvider | None,
    metrics_registry: CollectorRegistry,
) -> TelemetryService:
    """The telemetry service on the providers passed in; its metrics are exposed on `metrics_registry`."""
    metrics = Metrics(exporting_meter_provider(meter_provider))
    metrics_registry.register(MetricsCollector(metrics))
    return TelemetryService(tracing=Tracing(tracer_provider), metrics=metrics, registry=registry)
