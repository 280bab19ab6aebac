from __future__ import annotations

import threading

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanContext, StatusCode

from modelserve.telemetry import spans
from modelserve.telemetry.spans import Tracing, flatten_attributes


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


class ShapeMustNotBeRead:
    @property
    def shape(self) -> tuple[int, ...]:
        raise AssertionError("input shapes were built for a span that does not record")


def test_inference_span_is_child_of_current_span_with_model_attributes(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    inputs = {"x": np.zeros((4, 16), np.float32), "mask": np.zeros((4,), np.bool_)}
    with (
        tracing.tracer.start_as_current_span("request") as request,
        tracing.inference_span(model="fraud", version="2", reason="canary", slot="green", inputs=inputs),
    ):
        pass
    infer, parent = exporter.get_finished_spans()
    assert infer.name == "infer fraud"
    assert infer.parent is not None and infer.parent.span_id == request.get_span_context().span_id
    assert parent.name == "request"
    assert dict(infer.attributes or {}) == {
        spans.MODEL: "fraud",
        spans.VERSION: "2",
        spans.ROLE: "primary",
        spans.ROUTE_REASON: "canary",
        spans.SLOT: "green",
        spans.BATCH_SIZE: 4,
        spans.INPUT_SHAPES: ("x:4x16", "mask:4"),
    }


def test_inference_span_records_exception_as_error(tracing: Tracing, exporter: InMemorySpanExporter) -> None:
    with pytest.raises(ValueError), tracing.inference_span(model="fraud", version="1"):
        raise ValueError("bad input")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_noop_provider_yields_invalid_span_without_reading_inputs() -> None:
    tracing = Tracing(trace.NoOpTracerProvider())
    assert not tracing.enabled
    with tracing.inference_span(model="fraud", version="1", inputs={"x": ShapeMustNotBeRead()}) as span:
        assert not span.get_span_context().is_valid
    tracing.record_event("rollout.promote", {"model": "fraud"})


def test_sampled_out_span_skips_attribute_building(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    with tracing.inference_span(model="fraud", version="1", inputs={"x": ShapeMustNotBeRead()}) as span:
        assert not span.is_recording()
    assert exporter.get_finished_spans() == ()


def test_tracing_never_sets_the_global_provider() -> None:
    before = trace.get_tracer_provider()
    Tracing(TracerProvider())
    assert trace.get_tracer_provider() is before


def test_shadow_span_from_worker_thread_is_linked_not_parented(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.tracer.start_as_current_span("request"):
        captured = tracing.current_span_context()
    assert captured is not None

    def run_shadow(link: SpanContext) -> None:
        with tracing.shadow_span(link, model="fraud", version="2", primary_version="1", slot="green") as span:
            Tracing.set_shadow_result(span, outcome="compared", agree=False, detail="label 1 != 0")

    worker = threading.Thread(target=run_shadow, args=(captured,))
    worker.start()
    worker.join()
    request, shadow = exporter.get_finished_spans()
    assert shadow.name == "shadow fraud"
    assert shadow.parent is None
    assert shadow.context.trace_id != request.context.trace_id
    assert [link.context.span_id for link in shadow.links] == [request.context.span_id]
    attributes = dict(shadow.attributes or {})
    assert attributes[spans.ROLE] == "shadow"
    assert attributes[spans.VERSION] == "2"
    assert attributes[spans.SHADOW_PRIMARY_VERSION] == "1"
    assert attributes[spans.SHADOW_OUTCOME] == "compared"
    assert attributes[spans.SHADOW_AGREE] is False
    assert attributes[spans.SHADOW_DETAIL] == "label 1 != 0"


def test_shadow_timeout_sets_error_status_and_works_without_link(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    assert tracing.current_span_context() is None
    with tracing.shadow_span(None, model="fraud", version="2") as span:
        Tracing.set_shadow_result(span, outcome="timeout")
    (shadow,) = exporter.get_finished_spans()
    assert shadow.links == ()
    assert shadow.status.status_code is StatusCode.ERROR
    assert spans.SHADOW_AGREE not in dict(shadow.attributes or {})


def test_record_event_goes_on_the_current_span_when_one_records(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    with tracing.tracer.start_as_current_span("POST /admin/rollback"):
        tracing.record_event("rollout.rollback", {"model": "fraud", "error_rate": 0.12, "threshold": 0.05})
    (span,) = exporter.get_finished_spans()
    (event,) = span.events
    assert event.name == "rollout.rollback"
    assert dict(event.attributes or {}) == {"model": "fraud", "error_rate": 0.12, "threshold": 0.05}


def test_record_event_without_current_span_uses_a_short_rollout_span(
    tracing: Tracing, exporter: InMemorySpanExporter
) -> None:
    evidence = {"model": "fraud", "gate": {"name": "errors", "samples": 420, "passed": False}, "note": None}
    tracing.record_event("rollout.pause", evidence)
    (span,) = exporter.get_finished_spans()
    assert span.name == spans.ROLLOUT_SPAN
    assert dict(span.attributes or {}) == {spans.MODEL: "fraud"}
    assert dict(span.events[0].attributes or {}) == {
        "model": "fraud",
        "gate.name": "errors",
        "gate.samples": 420,
        "gate.passed": False,
    }


def test_flatten_attributes_keeps_scalar_sequences_and_stringifies_the_rest() -> None:
    flat = flatten_attributes(
        {
            "versions": ("1", "2"),
            "p": [np.float64(0.5), 1],
            "n": np.int64(3),
            "mixed": [1, "a"],
            "obj": object,
        }
    )
    assert flat["versions"] == ["1", "2"]
    assert flat["p"] == [0.5, 1.0]
    assert flat["n"] == 3 and type(flat["n"]) is int
    assert flat["mixed"] == ["1", "a"]
    assert flat["obj"] == "<class 'object'>"
