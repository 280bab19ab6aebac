"""The shadow feature: run candidate versions beside the live one on real traffic, compare, report.

Wiring (see `server/app.py` Feature): an *observer* sees each finished inference after its response
was sent; for a 200 whose route decision names shadow versions it hands each shadow run to the
`ShadowRunner` (a dedicated pool of low-priority threads with an admission bound that drops and
counts; never anyio's pool, never the primary's limiter). A shadow version whose warm-up showed it
runs in a few µs can instead run on the event loop right there (`[shadow] on_loop = true`): every
request is then compared, and the primary pays the shadow's time. Shadows are skipped (counted as
dropped) while the event loop is behind, so a saturated server sheds them first.

Every outcome is recorded per shadow version in the runner's stats, in `services.windows` (role
"shadow": the rollout gates read it), in the telemetry metrics and as a span linked to the request
(when telemetry is installed), and in `<state_dir>/shadow/comparisons.jsonl` (rotating; see
`shadow/sink.py` for the record format).

Admin API (bearer token):
    POST /admin/models/{model}/shadow          {"versions": ["2"], "rate": 1.0} | {"off": true}
    GET  /admin/models/{model}/shadow/report   stats per shadow version + promotion recommendation
         query: min_samples, min_agreement, max_latency_ratio, max_error_ratio
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import anyio
import anyio.to_thread
from starlette.requests import Request
from starlette.routing import Route

from modelserve.config import ShadowConfig
from modelserve.errors import ModelServeError, RequestError
from modelserve.server.admin import admin_endpoint, model_status
from modelserve.server.app import Feature, Services
from modelserve.server.inference import InferenceRecord
from modelserve.shadow import JsonlSink, ShadowResult, ShadowRunner, recommend

#: Shadow pool threads: 2 so one hung shadow cannot stop every other model's shadows.
POOL_WORKERS = 2
#: Global bound on shadow runs queued or running (each model also has its `[shadow] max_in_flight`).
MAX_IN_FLIGHT = 64
#: How much the shadow threads lower their priority (nice); 19 is the lowest priority.
POOL_NICE = 19
#: Shadows are skipped while the event loop runs this late (it is saturated).
MAX_LOOP_LAG_S = 0.05
LAG_PROBE_INTERVAL_S = 0.1
#: Thresholds `recommend` accepts from the report's query string.
_THRESHOLDS = {
    "min_samples": int,
    "min_agreement": float,
    "max_latency_ratio": float,
    "max_error_ratio": float,
}


class ShadowService:
    """The server's shadow runner, sink and observer; `services.shadow`."""

    def __init__(self, services: Services, *, sink: JsonlSink | None) -> None:
        self.services = services
        self.sink = sink
        self.loop_lag_s = 0.0
        self.skipped_behind = 0
        self.runner = ShadowRunner(
            max_workers=POOL_WORKERS, max_in_flight=MAX_IN_FLIGHT, sink=sink, on_result=self._on_result,
            nice=POOL_NICE,
        )  # fmt: skip

    def observe(self, record: InferenceRecord) -> None:
        """Observer: submit the shadow runs of a successful request (event loop, after the response)."""
        decision = record.decision
        if not decision.shadows or record.status != 200 or record.outputs is None or record.inputs is None:
            return
        slots = self.services.registry.models.get(record.model)
        if slots is None:
            return
        config: ShadowConfig = slots.config.shadow
        behind = self.loop_lag_s > MAX_LOOP_LAG_S
        link = self._span_link()
        for version in decision.shadows:
            if behind:
                self.skipped_behind += 1
                self._dropped(record.model, version, decision.version)
                continue
            try:
                loaded = slots.get(version)
            except ModelServeError:  # unloaded or replaced since the decision was made
                self._dropped(record.model, version, decision.version)
                continue
            run = (
                self.runner.run_inline
                if self._inline(loaded, config, record.model, version)
                else self.runner.submit
            )
            admitted = run(
                model=record.model, primary_version=decision.version, shadow_version=version,
                run=partial(loaded.run, record.inputs), inputs=record.inputs,
                primary_outputs=record.outputs,
                primary_latency_s=record.inference_s if record.inference_s is not None else record.latency_s,
                request_id=record.request_id, compare=config.compare, context=link,
                timeout_s=config.timeout_ms / 1e3, max_in_flight=config.max_in_flight,
            )  # fmt: skip
            if not admitted:
                self._count_drop(record.model, version, decision.version)

    def set_shadow(self, model: str, versions: tuple[str, ...], rate: float | None = None) -> dict[str, Any]:
        """Shadow `versions` of `model` (each loaded and ready, none live) at `rate`; () turns it off."""
        slots = self.services.registry.slots(model)
        live = slots.live.version if slots.live is not None else None
        for version in versions:
            if version == live:
                raise RequestError(f"version {version} is the live version of {model!r}; shadow another one")
            if version not in slots.ready_versions:
                raise RequestError(
                    f"version {version} of model {model!r} is not loaded and ready; "
                    f"stage it first (modelserve stage {model} {version})"
                )
        changes: dict[str, Any] = {"shadow_versions": versions}
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0.0 <= rate <= 1.0:
                raise RequestError("rate must be a number within 0..1")
            changes["shadow_sample_rate"] = float(rate)
        self.services.policies.update(model, **changes)
        return self.status(model)

    def report(self, model: str, **thresholds: Any) -> dict[str, Any]:
        """Every shadow version's stats with its promotion recommendation and the evidence."""
        slots = self.services.registry.slots(model)
        policy = self.services.policies.get(model)
        live = slots.live.version if slots.live is not None else None
        configured = policy.shadow_versions if policy is not None else ()
        for version in configured:
            self.runner.stats(model, version)  # a configured version is reported even before its first run
        primary = self.services.windows.snapshot(model, live, "primary") if live else None
        primary_error_rate = (primary.error_rate or 0.0) if primary is not None and primary.requests else 0.0
        shadows = []
        for snapshot in sorted(self.runner.snapshot(model), key=lambda s: s["shadow_version"]):
            verdict = recommend(snapshot, primary_error_rate=primary_error_rate, **thresholds)
            shadows.append({**snapshot, "active": snapshot["shadow_version"] in configured,
                            "recommendation": verdict.as_dict()})  # fmt: skip
        return {
            "model": model,
            "live_version": live,
            "shadow_versions": list(configured),
            "sample_rate": policy.shadow_sample_rate if policy is not None else None,
            "primary": {
                "version": live,
                "requests": primary.requests if primary is not None else 0,
                "error_rate": primary_error_rate,
                "p95_ms": None if primary is None or primary.p95 is None else primary.p95 * 1e3,
            },
            "shadows": shadows,
            "sink": None if self.sink is None else {"path": str(self.sink.path), **self.sink.stats()},
        }

    def status(self, model: str) -> dict[str, Any]:
        """A short shadow summary for `/admin/models/{model}`."""
        policy = self.services.policies.get(model)
        versions: dict[str, Any] = {}
        for snapshot in self.runner.snapshot(model):
            versions[snapshot["shadow_version"]] = {
                key: snapshot[key]
                for key in (
                    "samples",
                    "agreement_rate",
                    "agreement_interval",
                    "errors",
                    "timeouts",
                    "dropped",
                )
            }
        return {
            "shadow": {
                "versions": list(policy.shadow_versions) if policy is not None else [],
                "sample_rate": policy.shadow_sample_rate if policy is not None else None,
                "in_flight": self.runner.in_flight,
                "loop_lag_ms": round(self.loop_lag_s * 1e3, 3),
                "stats": versions,
            }
        }

    async def watch_loop_lag(self) -> None:
        """Measure how late the event loop wakes up; `observe` sheds shadows while it is behind."""
        while True:
            started = time.perf_counter()
            await anyio.sleep(LAG_PROBE_INTERVAL_S)
            self.loop_lag_s = max(0.0, time.perf_counter() - started - LAG_PROBE_INTERVAL_S)

    def close(self) -> None:
        """Stop the runner (waiting briefly for running shadows), then flush and close the sink."""
        self.runner.close(timeout=2.0)
        if self.sink is not None:
            self.sink.close()

    def _inline(self, loaded: Any, config: ShadowConfig, model: str, version: str) -> bool:
        """`[shadow] on_loop`: a µs model's shadow runs on the loop after the response (every request
        compared, at the cost of primary latency); otherwise on the low-priority pool (shed under load)."""
        return bool(config.on_loop and loaded.inline and self.runner.inline_allowed(model, version))

    def _span_link(self) -> object:
        tracing = getattr(self.services.telemetry, "tracing", None)
        if tracing is None or not getattr(tracing, "enabled", False):
            return None
        return tracing.current_span_context()

    def _dropped(self, model: str, version: str, primary_version: str) -> None:
        self.runner.stats(model, version).record_dropped()
        self._count_drop(model, version, primary_version)

    def _count_drop(self, model: str, version: str, primary_version: str) -> None:
        metrics = getattr(self.services.telemetry, "metrics", None)
        if metrics is not None:
            metrics.record_shadow_drop(model, version, primary_version)

    def _on_result(self, result: ShadowResult) -> None:
        """Runs on the thread that settled the run: windows, metrics and the linked span."""
        model, version, primary = result.model, result.shadow_version, result.primary_version
        self.services.windows.record(
            model, version, "shadow", result.shadow_latency_s, error=result.error is not None,
            timeout=result.timed_out,
        )  # fmt: skip
        telemetry = self.services.telemetry
        metrics = getattr(telemetry, "metrics", None)
        if metrics is not None:
            if result.comparison is not None:
                metrics.record_shadow_comparison(model, version, primary, result.comparison.agree)
            elif result.timed_out:
                metrics.record_shadow_timeout(model, version, primary)
            else:
                metrics.record_shadow_error(model, version, primary)
        tracing = getattr(telemetry, "tracing", None)
        if tracing is not None and getattr(tracing, "enabled", False):
            _shadow_span(tracing, result)


def _shadow_span(tracing: Any, result: ShadowResult) -> None:
    """A span for a settled shadow run, linked to the request's span, timed as the run was."""
    from opentelemetry import context as otel_context
    from opentelemetry.trace import Link, Status, StatusCode

    from modelserve.telemetry import spans

    link = result.context
    links = [Link(link)] if link is not None and getattr(link, "is_valid", False) else None  # type: ignore[arg-type]
    span = tracing.tracer.start_span(
        f"shadow {result.model}", context=otel_context.Context(), links=links,
        start_time=result.start_time_ns or result.end_time_ns,
    )  # fmt: skip
    if span.is_recording():
        outcome = "compared" if result.comparison is not None else "timeout" if result.timed_out else "error"
        span.set_attributes({
            spans.MODEL: result.model, spans.VERSION: result.shadow_version, spans.ROLE: spans.ROLE_SHADOW,
            spans.SHADOW_PRIMARY_VERSION: result.primary_version, spans.SHADOW_OUTCOME: outcome,
        })  # fmt: skip
        if result.comparison is not None:
            span.set_attribute(spans.SHADOW_AGREE, result.comparison.agree)
        if outcome != "compared":
            span.set_status(Status(StatusCode.ERROR, result.error or outcome))
    span.end(end_time=result.end_time_ns)


def _thresholds(request: Request) -> dict[str, Any]:
    chosen: dict[str, Any] = {}
    for name, kind in _THRESHOLDS.items():
        raw = request.query_params.get(name)
        if raw is not None:
            try:
                chosen[name] = kind(raw)
            except ValueError:
                raise RequestError(f"{name} must be a number, not {raw!r}") from None
    return chosen


def install(services: Services) -> Feature:
    """Build `services.shadow` and the shadow admin routes, observer, status and lifecycle hooks."""
    state_dir = services.config.state_dir
    sink = JsonlSink(state_dir / "shadow" / "comparisons.jsonl") if state_dir is not None else None
    shadow = ShadowService(services, sink=sink)
    services.shadow = shadow

    async def configure(request: Request, body: dict[str, Any]) -> Any:
        model = request.path_params["model"]
        if body.get("off") is True:
            shadow.set_shadow(model, ())
        else:
            if "versions" not in body and "version" not in body:
                raise RequestError('send {"versions": ["2"], "rate": 1.0} or {"off": true}')
            raw = body.get("versions", body.get("version"))
            listed = [raw] if isinstance(raw, str | int) and not isinstance(raw, bool) else raw
            if not isinstance(listed, list) or not listed:
                raise RequestError("versions must be a non-empty list of version names")
            shadow.set_shadow(model, tuple(str(v) for v in listed), body.get("rate"))
        return model_status(services, model)

    async def report(request: Request, body: dict[str, Any]) -> Any:
        return shadow.report(request.path_params["model"], **_thresholds(request))

    async def close() -> None:
        await anyio.to_thread.run_sync(shadow.close)

    return Feature(
        name="shadow",
        routes=[
            Route("/admin/models/{model}/shadow", admin_endpoint(services, configure), methods=["POST"]),
            Route("/admin/models/{model}/shadow/report", admin_endpoint(services, report), methods=["GET"]),
        ],
        observers=[shadow.observe],
        status=shadow.status,
        tasks=[shadow.watch_loop_lag],
        shutdown=[close],
    )
