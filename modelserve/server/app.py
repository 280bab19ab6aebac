"""`create_app(config)`: the composition root. Builds every object, wires them, owns the lifespan.

Each capability beyond plain serving (routing, telemetry, shadow, rollout, experiments) is a
*feature*: a module with `install(services) -> Feature` that creates its objects, hangs them on
`Services`, and hands back what the app must wire (routes, middleware, observers, status, tasks).
`create_app` wires every feature the same way, in order; nothing is a global.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute
from starlette.types import Scope

from modelserve.config import ServerConfig
from modelserve.errors import AuthError, ModelServeError
from modelserve.routing.decision import RouteDecision
from modelserve.server import admin, inference, protocol
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.policies import PolicyTable
from modelserve.state.store import FileStateStore, MemoryStateStore, StateStore
from modelserve.telemetry.windows import SlidingWindows

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("modelserve.server")

Hook = Callable[[], Coroutine[Any, Any, None]]


@dataclass(slots=True, kw_only=True)
class Feature:
    """What one feature adds to the app."""

    name: str
    routes: list[BaseRoute] = field(default_factory=list)
    #: Outermost first; each is `Middleware(cls, **options)` for a pure ASGI class.
    middleware: list[Middleware] = field(default_factory=list)
    observers: list[inference.Observer] = field(default_factory=list)
    status: Callable[[str], dict[str, Any]] | None = None
    startup: list[Hook] = field(default_factory=list)
    #: Long-running coroutines, run in the lifespan's task group and cancelled at shutdown.
    tasks: list[Hook] = field(default_factory=list)
    shutdown: list[Hook] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class Services:
    """Everything routes, middleware and features use; built once by `create_app` and passed in.

    The attributes after `windows` are set by the feature that owns them (None when not installed).
    """

    config: ServerConfig
    registry: ModelRegistry
    store: StateStore
    policies: PolicyTable
    windows: SlidingWindows
    tracer_provider: TracerProvider | None = None
    meter_provider: MeterProvider | None = None
    router: Any = None  # middleware.routing.Router
    telemetry: Any = None  # server.telemetry_feature.TelemetryService
    shadow: Any = None  # server.shadow_feature.ShadowService
    rollout: Any = None  # server.rollout_feature.RolloutService
    experiments: Any = None  # server.experiments_feature.ExperimentService
    observers: list[inference.Observer] = field(default_factory=list)
    status_extensions: list[Callable[[str], dict[str, Any]]] = field(default_factory=list)
    #: Whether responses of this model need a generated request id (to post outcomes back to).
    wants_request_id: Callable[[str], bool] = field(default=lambda model: False)
    started: bool = False
    load_errors: dict[str, str] = field(default_factory=dict)

    def expected_models(self) -> list[str]:
        if self.config.load_models is not None:
            return list(self.config.load_models)
        return self.registry.repository.model_names()

    def check_admin(self, authorization: str | None) -> None:
        """Raise AuthError unless the admin token is configured and presented as a bearer token."""
        token = self.config.admin_token
        if not token:
            raise AuthError("the admin API is disabled: start the server with an admin token", status=403)
        if not authorization or not authorization.lower().startswith("bearer "):
            raise AuthError("missing bearer token", status=401)
        if not hmac.compare_digest(authorization[7:].strip().encode(), token.encode()):
            raise AuthError("invalid admin token", status=403)

    async def load_model(self, name: str) -> None:
        """Load a model warm and give it a routing policy."""
        slots = await self.registry.load_model(name)
        if slots.live is not None:
            self.policies.ensure(name, slots.config, slots.live.version)
        self.load_errors.pop(name, None)


FeatureInstaller = Callable[[Services], Feature]


def default_features() -> list[FeatureInstaller]:
    from modelserve.server import (
        experiments_feature,
        rollout_feature,
        routing_feature,
        shadow_feature,
        telemetry_feature,
    )

    # Order matters: telemetry's middleware is outermost; rollout reads what shadow and routing built.
    return [
        telemetry_feature.install,
        routing_feature.install,
        shadow_feature.install,
        experiments_feature.install,
        rollout_feature.install,
    ]


def build_services(
    config: ServerConfig,
    *,
    store: StateStore | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
) -> Services:
    repository = ModelRepository(config.repository)
    if store is None:
        store = FileStateStore(config.state_dir) if config.state_dir is not None else MemoryStateStore()
    registry = ModelRegistry(repository, store)
    policies = PolicyTable(store)
    registry.listeners.append(policies.on_switch)
    return Services(
        config=config,
        registry=registry,
        store=store,
        policies=policies,
        windows=SlidingWindows(window_s=600, sub_windows=120),
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
    )


class ModelServe:
    """modelserve inside any Starlette app: middleware, routes, lifespan and `predict`.

    Serving alone is `ModelServe(config).app()` (what `create_app` returns). Embedded::

        ms = ModelServe(ServerConfig(repository=Path("models")))
        app = Starlette(routes=[Route("/score", score), *ms.routes], middleware=ms.middleware,
                        lifespan=ms.lifespan)

        async def score(request):
            outputs = await ms.predict(request, "credit", {"input": features})

    Telemetry uses the providers passed in (else the global ones); nothing here sets globals.
    """

    def __init__(
        self,
        config: ServerConfig,
        *,
        store: StateStore | None = None,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        features: Sequence[FeatureInstaller] | None = None,
    ) -> None:
        self.services = build_services(
            config, store=store, tracer_provider=tracer_provider, meter_provider=meter_provider
        )
        self.features = [
            install(self.services) for install in (default_features() if features is None else features)
        ]
        self.services.observers.append(self._record_window)
        for feature in self.features:
            self.services.observers.extend(feature.observers)
            if feature.status is not None:
                self.services.status_extensions.append(feature.status)
        v2_routes = inference.routes(self.services)
        self.routes: list[BaseRoute] = [
            *v2_routes,
            *admin.routes(self.services),
            *[route for feature in self.features for route in feature.routes],
        ]
        self.middleware: list[Middleware] = [
            *[m for feature in self.features for m in feature.middleware],
            inference.infer_fast_path(v2_routes),  # innermost: after routing has put its context in
        ]

    def _record_window(self, record: inference.InferenceRecord) -> None:
        """Per-version sliding windows (rollout gates, status): server errors count, client errors don't.

        Latency is the model run alone, so a shadow run (timed the same way) compares like with like.
        """
        if record.loaded is not None and (record.status < 400 or record.status >= 500):
            latency = record.inference_s if record.inference_s is not None else record.latency_s
            self.services.windows.record(
                record.model, record.decision.version, "primary", latency, error=record.status >= 500
            )

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Load every model warm, start the features' tasks; stop them on shutdown."""
        services = self.services
        for name in services.expected_models():
            try:
                await services.load_model(name)
            except ModelServeError as exc:  # one broken model must not keep the others down
                services.load_errors[name] = str(exc)
                log.error("model %s not loaded: %s", name, exc)
        for feature in self.features:
            for hook in feature.startup:
                await hook()
        async with anyio.create_task_group() as tasks:
            for feature in self.features:
                for task in feature.tasks:
                    tasks.start_soon(task)
            services.started = True
            try:
                yield
            finally:
                services.started = False
                tasks.cancel_scope.cancel()
        for feature in reversed(self.features):
            for hook in feature.shutdown:
                try:
                    await hook()
                except Exception:
                    log.exception("%s shutdown failed", feature.name)

    def decision(self, request: HTTPConnection | Scope, model: str) -> RouteDecision:
        """The route decision this request gets for `model` (made once, then cached in the scope)."""
        scope = request.scope if isinstance(request, HTTPConnection) else request
        return inference.resolve(self.services, scope, model, None)[0]

    async def predict(
        self,
        request: HTTPConnection | Scope,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `model` for this request as routing decides (or the pinned `version`).

        Shadows, metrics and experiments see the call exactly as they see a V2 request. Raises the
        modelserve errors (NotFound, NotReady, RequestError, InferenceError).
        """
        started = time.perf_counter()
        scope = request.scope if isinstance(request, HTTPConnection) else request
        decision, loaded = inference.resolve(self.services, scope, model, version)
        feeds = dict(inputs)
        outputs: dict[str, np.ndarray] | None = None
        status, error, inference_s = 200, None, None
        try:
            run_started = time.perf_counter()
            outputs = await loaded.infer(feeds)
            inference_s = time.perf_counter() - run_started
        except Exception as exc:
            status, error = protocol.status_for(exc), str(exc)
            raise
        finally:
            if outputs is not None or error is not None:  # not when the caller was cancelled
                record = inference.InferenceRecord(
                    scope, model, decision, loaded, feeds, outputs, time.perf_counter() - started, status,
                    error, None, inference_s,
                )  # fmt: skip
                inference.notify(self.services, record)
        return outputs

    def app(self) -> Starlette:
        """A Starlette app serving the V2 API, the admin API and every feature's routes."""
        app = Starlette(routes=self.routes, middleware=self.middleware, lifespan=self.lifespan)
        app.state.services = self.services
        app.state.modelserve = self
        return app


def create_app(
    config: ServerConfig,
    *,
    store: StateStore | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    features: Sequence[FeatureInstaller] | None = None,
) -> Starlette:
    """The modelserve ASGI app: V2 inference API, admin API, every feature; loads models on startup."""
    return ModelServe(
        config, store=store, tracer_provider=tracer_provider, meter_provider=meter_provider, features=features
    ).app()
