"""OpenTelemetry spans for modelserve, over an injected TracerProvider.

`Tracing` is built once by the composition root from the provider passed to `create_app` (or the
global one when none is passed; this module never sets a global). It offers:

- `inference_span(...)`: a child span per inference, with model, version, slot, role, route reason,
  batch size and input shapes;
- `shadow_span(link, ...)`: a span *linked* (not parented) to the request span, usable from a worker
  thread given a `SpanContext` captured on the request path with `current_span_context()`;
- `record_inference(...)` / `record_shadow(link, ...)`: the same spans recorded after the fact, with
  explicit start and end timestamps (for observers and shadow result hooks);
- `record_event(name, attributes)`: rollout decisions and their evidence as span events.

Attribute building is skipped when the span does not record (no-op provider or sampled out).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue

TRACER_NAME = "modelserve"

MODEL = "modelserve.model"
VERSION = "modelserve.version"
SLOT = "modelserve.slot"
ROLE = "modelserve.role"
ROUTE_REASON = "modelserve.route.reason"
ROUTE_ARM = "modelserve.route.arm"
ROUTE_SHADOWS = "modelserve.route.shadows"
BATCH_SIZE = "modelserve.batch_size"
INPUT_SHAPES = "modelserve.input_shapes"
SHADOW_AGREE = "modelserve.shadow.agree"
SHADOW_OUTCOME = "modelserve.shadow.outcome"
SHADOW_DETAIL = "modelserve.shadow.detail"
SHADOW_PRIMARY_VERSION = "modelserve.shadow.primary_version"

#: Scope key for the slot that served the request: a slot name, or a dict model -> slot name.
SLOT_KEY = "modelserve.slot"
#: Scope key for the decisions that actually served the request: a dict model -> RouteDecision.
SERVED_KEY = "modelserve.served"

ROLE_PRIMARY = "primary"
ROLE_SHADOW = "shadow"

#: Values of `modelserve.shadow.outcome`; `Metrics` has one counter per outcome.
SHADOW_OUTCOMES = ("compared", "dropped", "timeout", "error")

#: Name of the short span that carries a rollout event when no span is current.
ROLLOUT_SPAN = "modelserve.rollout"


class ActiveSpan:
    """Context manager making a started span current, ending it on exit and recording an exception.

    A small class rather than `start_as_current_span`, whose two generator layers add a few µs to
    every inference. A span that does not record is never made current.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        if self._span.is_recording():
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            if exc is not None:
                self._span.record_exception(exc)
                self._span.set_status(
                    Status(StatusCode.ERROR, f"{exc_type.__name__ if exc_type else ''}: {exc}")
                )
            otel_context.detach(self._token)
            self._token = None
        self._span.end()


_NO_SPAN = ActiveSpan(INVALID_SPAN)


class Tracing:
    """The tracer named "modelserve" and the W3C propagator, built from an optional provider."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=provider)
        self.propagator = propagator if propagator is not None else TraceContextTextMapPropagator()
        # A no-op provider can never record: callers skip span work entirely.
        self.enabled = not isinstance(provider, trace.NoOpTracerProvider)

    @staticmethod
    def current_span_context() -> SpanContext | None:
        """The current span's context, to link a shadow span to later; None when there is none."""
        span_context = trace.get_current_span().get_span_context()
        return span_context if span_context.is_valid else None

    def inference_span(
        self,
        *,
        model: str,
        version: str,
        role: str = ROLE_PRIMARY,
        reason: str | None = None,
        slot: str | None = None,
        batch_size: int | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> ActiveSpan:
        """A child span of the current one around one inference: `with tracing.inference_span(...) as span`.

        `inputs` maps input names to arrays (anything with `.shape`); shapes are read only when the
        span records.
        """
        if not self.enabled:
            return _NO_SPAN
        span = self.tracer.start_span(f"infer {model}")
        if span.is_recording():
            span.set_attributes(_model_attributes(model, version, role, reason, slot, batch_size, inputs))
        return ActiveSpan(span)

    def shadow_span(
        self,
        link: SpanContext | None,
        *,
        model: str,
        version: str,
        primary_version: str | None = None,
        slot: str | None = None,
    ) -> ActiveSpan:
        """A new root span for a shadow run, linked to the request span `link`.

        Safe from a worker thread. Call `set_shadow_result` on the yielded span with the outcome.
        """
        if not self.enabled:
            return _NO_SPAN
        links = [Link(link)] if link is not None and link.is_valid else None
        # An empty context makes this a root span: the shadow outlives the request it mirrors.
        span = self.tracer.start_span(f"shadow {model}", context=otel_context.Context(), links=links)
        if span.is_recording():
            attributes = _model_attributes(model, version, ROLE_SHADOW, None, slot, None, None)
            if primary_version is not None:
                attributes[SHADOW_PRIMARY_VERSION] = primary_version
            span.set_attributes(attributes)
        return ActiveSpan(span)

    def record_inference(
        self,
        *,
        start_ns: int,
        end_ns: int,
        model: str,
        version: str,
        role: str = ROLE_PRIMARY,
        reason: str | None = None,
        slot: str | None = None,
        inputs: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Record a finished inference as a child of the current span, with explicit timestamps.

        For after-the-fact recording (an observer running once the response is sent): nothing is made
        current, and the span costs one start, one attribute batch and one end.
        """
        if not self.enabled:
            return
        span = self.tracer.start_span(f"infer {model}", start_time=start_ns)
        if span.is_recording():
            span.set_attributes(_model_attributes(model, version, role, reason, slot, None, inputs))
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=end_ns)

    def record_shadow(
        self,
        link: SpanContext | None,
        *,
        start_ns: int,
        end_ns: int,
        model: str,
        version: str,
        primary_version: str | None,
        outcome: str,
        agree: bool | None = None,
        detail: str = "",
        slot: str | None = None,
        attributes: Mapping[str, AttributeValue] | None = None,
    ) -> None:
        """Record a finished shadow run as a root span linked to the request span `link`.

        Safe from any thread; `outcome` is one of `SHADOW_OUTCOMES`.
        """
        if not self.enabled:
            return
        links = [Link(link)] if link is not None and link.is_valid else None
        span = self.tracer.start_span(
            f"shadow {model}", context=otel_context.Context(), links=links, start_time=start_ns
        )
        if span.is_recording():
            values = _model_attributes(model, version, ROLE_SHADOW, None, slot, None, None)
            if primary_version is not None:
                values[SHADOW_PRIMARY_VERSION] = primary_version
            if attributes:
                values.update(attributes)
            span.set_attributes(values)
            self.set_shadow_result(span, outcome=outcome, agree=agree, detail=detail)
        span.end(end_time=end_ns)

    @staticmethod
    def set_shadow_result(span: Span, *, outcome: str, agree: bool | None = None, detail: str = "") -> None:
        """Record a shadow's outcome (one of `SHADOW_OUTCOMES`) and comparison on its span."""
        if not span.is_recording():
            return
        span.set_attribute(SHADOW_OUTCOME, outcome)
        if agree is not None:
            span.set_attribute(SHADOW_AGREE, agree)
        if detail:
            span.set_attribute(SHADOW_DETAIL, detail)
        if outcome in ("timeout", "error"):
            span.set_status(Status(StatusCode.ERROR, detail or outcome))

    def record_event(self, name: str, attributes: Mapping[str, Any] | None = None) -> None:
        """Record a rollout decision (promote, pause, rollback...) with its evidence as a span event.

        The event goes on the current span when one records (e.g. an admin request); otherwise on a
        short `modelserve.rollout` span of its own (e.g. the rollout controller's background task).
        Nested evidence mappings are flattened to dotted keys.
        """
        if not self.enabled:
            return
        flat = flatten_attributes(attributes or {})
        current = trace.get_current_span()
        if current.is_recording():
            current.add_event(name, flat)
            return
        with self.tracer.start_as_current_span(ROLLOUT_SPAN, context=otel_context.Context()) as span:
            if span.is_recording():
                model = flat.get("model")
                if isinstance(model, str):
                    span.set_attribute(MODEL, model)
                span.add_event(name, flat)


def _model_attributes(
    model: str,
    version: str,
    role: str,
    reason: str | None,
    slot: str | None,
    batch_size: int | None,
    inputs: Mapping[str, Any] | None,
) -> dict[str, AttributeValue]:
    attributes: dict[str, AttributeValue] = {MODEL: model, VERSION: version, ROLE: role}
    if reason is not None:
        attributes[ROUTE_REASON] = reason
    if slot is not None:
        attributes[SLOT] = slot
    if batch_size is not None:
        attributes[BATCH_SIZE] = batch_size
    if inputs:
        attributes[INPUT_SHAPES] = input_shapes(inputs)
        if batch_size is None:
            first = next(iter(inputs.values()))
            shape = getattr(first, "shape", ())
            if shape:
                attributes[BATCH_SIZE] = int(shape[0])
    return attributes


def input_shapes(inputs: Mapping[str, Any]) -> list[str]:
    """Input shapes as `name:1x16` strings (span attributes hold flat sequences only)."""
    return [
        f"{name}:{'x'.join(str(d) for d in getattr(array, 'shape', ()))}" for name, array in inputs.items()
    ]


def flatten_attributes(values: Mapping[str, Any], prefix: str = "") -> dict[str, AttributeValue]:
    """Evidence to OTel attributes: nested mappings become dotted keys, None is dropped, sequences
    of scalars stay sequences, anything else becomes its `str`."""
    flat: dict[str, AttributeValue] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if value is None:
            continue
        if isinstance(value, Mapping):
            flat.update(flatten_attributes(value, f"{name}."))
        elif isinstance(value, bool | str):
            flat[name] = value
        elif isinstance(value, numbers.Integral):
            flat[name] = int(value)
        elif isinstance(value, numbers.Real):
            flat[name] = float(value)
        elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
            items = list(value)
            if items and all(isinstance(item, str) for item in items):
                flat[name] = [str(item) for item in items]
            elif items and all(
                isinstance(item, numbers.Real) and not isinstance(item, bool) for item in items
            ):
                flat[name] = [float(item) for item in items]
            else:
                flat[name] = [str(item) for item in items]
        else:
            flat[name] = str(value)
    return flat
