"""`ModelServe` and `create_app(config)`: the HTTP shell over the services `build_services` wires.

`ModelServe` turns `Services` (`server/services.py`) into what Starlette needs: the route modules'
routes (one module per concern, each given the service it serves), the middleware (telemetry
outermost, then routing, then the infer fast path), and a lifespan that loads the models and runs the
declared hooks. `predict` is the embedded entry to the same inference path the V2 endpoint uses.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence

import anyio
import numpy as np
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Scope

from modelserve.config import ServerConfig
from modelserve.errors import AuthError, ModelServeError, NotReady, http_status
from modelserve.experiments.service import ExperimentService
from modelserve.middleware.limits import RequestLimitsMiddleware
from modelserve.middleware.routing import RoutingMiddleware
from modelserve.middleware.telemetry import TelemetryMiddleware
from modelserve.routing.decision import RouteDecision
from modelserve.server import (
    audit_routes,
    experiment_routes,
    model_routes,
    monitoring_routes,
    protocol,
    rollout_routes,
    routing_routes,
    shadow_routes,
    v2_routes,
)
from modelserve.server.admin import audit_snapshot
from modelserve.server.services import (
    Extension,
    ExtensionFactory,
    FeatureSet,
    build_services,
    install_extensions,
)
from modelserve.serving.layout import check_repository
from modelserve.state.audit import SYSTEM, Actor
from modelserve.state.cached import CoordinatorStore
from modelserve.state.store import StateStore
from modelserve.telemetry.prometheus import metrics_app

log = logging.getLogger("modelserve.server")

METRICS_PATH = "/metrics"
#: A Starlette / FastAPI exception handler.
ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


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
        features: FeatureSet | None = None,
        extensions: Sequence[ExtensionFactory] = (),
    ) -> None:
        self.services = services = build_services(
            config,
            features=features,
            store=store,
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
        )
        self.extensions: list[Extension] = install_extensions(services, extensions)
        v2 = v2_routes.routes(services)
        routes: list[BaseRoute] = [*v2, *model_routes.routes(services), *routing_routes.routes(services)]
        routes += audit_routes.routes(services)
        # Outermost: limits apply before anything reads headers or the body.
        middleware: list[Middleware] = [
            Middleware(
                RequestLimitsMiddleware, max_body_bytes=config.max_body_bytes,
                max_header_bytes=config.max_header_bytes,
            )
        ]  # fmt: skip
        exposed = services.metrics_registry
        if services.worker_metrics is not None:
            exposed = services.worker_metrics.exposition()
        routes.append(Route(METRICS_PATH, metrics_app(exposed)))
        telemetry = services.telemetry
        if telemetry is not None:
            # Metrics are recorded by the telemetry observer, once per inference: the middleware does spans.
            middleware.append(Middleware(TelemetryMiddleware, tracing=telemetry.tracing, metrics=None))
        if services.shadow is not None:
            routes += shadow_routes.routes(services, services.shadow)
        if services.experiments is not None:
            routes += experiment_routes.routes(services, services.experiments)
        if services.rollout is not None:
            routes += rollout_routes.routes(services, services.rollout)
        if services.monitoring is not None:
            routes += monitoring_routes.routes(services, services.monitoring)
        middleware.append(Middleware(RoutingMiddleware, router=services.router))
        for extension in self.extensions:
            routes += extension.routes
            middleware += extension.middleware
        middleware.append(v2_routes.infer_fast_path(v2))  # innermost: after routing has put its context in
        self.routes = routes
        self.middleware = middleware

    @contextlib.asynccontextmanager
    async def lifespan(self, app: object = None) -> AsyncIterator[None]:
        """Load every model warm, run the startup hooks and tasks; the shutdown hooks at the end."""
        services = self.services
        hooks = services.hooks
        layout = check_repository(services.config.repository)  # ConfigError: nothing to serve at all
        for problem in layout.problems:
            log.error("model %s: %s", problem.model, problem.message())
        services.layout_errors = layout.unservable()
        for hook in hooks.prepare:
            await hook()
        if isinstance(services.store, CoordinatorStore):
            await services.store.preload(services.audit.keys())
        await anyio.to_thread.run_sync(services.audit.load)
        for name in services.expected_models():
            if name in services.layout_errors:
                continue
            try:
                await services.load_model(name)
            except ModelServeError as exc:  # one broken model must not keep the others down
                services.load_errors[name] = str(exc)
                log.error("model %s not loaded: %s", name, exc)
        for hook in hooks.startup:
            await hook()
        for name in sorted(services.registry.models):  # what this start serves, after any restore
            services.audit.record(
                name, "restore", actor=Actor(scope=SYSTEM), after=audit_snapshot(services, name),
                detail="state at startup",
            )  # fmt: skip
        async with anyio.create_task_group() as tasks:
            for task in hooks.tasks:  # supervised: one failing task never stops the others or serving
                tasks.start_soon(services.supervisor.run, task_name(task), task)
            services.started = True
            try:
                yield
            finally:
                services.started = False
                tasks.cancel_scope.cancel()
        for hook in hooks.shutdown:
            try:
                await hook()
            except Exception:
                log.exception("shutdown hook %r failed", hook)

    def decision(self, request: HTTPConnection | Scope, model: str) -> RouteDecision:
        """The route decision this request gets for `model` (made once, then cached in the scope)."""
        scope = request.scope if isinstance(request, HTTPConnection) else request
        return self.services.inference.begin(scope, model).decision

    async def predict(
        self,
        request: HTTPConnection | Scope,
        model: str,
        inputs: Mapping[str, np.ndarray],
        *,
        version: str | None = None,
    ) -> dict[str, np.ndarray]:
        """Run `model` for this request as routing decides (or the pinned `version`).

        The same inference path as the V2 endpoint: shadows, metrics and experiments see the call
        exactly as they see a V2 request. Raises the modelserve errors (NotFound, NotReady,
        RequestError, InferenceError).
        """
        scope = request.scope if isinstance(request, HTTPConnection) else request
        if not self.services.started:
            raise NotReady(v2_routes.LIFESPAN_NOT_RUN)
        record = await self.services.inference.infer(scope, model, version, inputs)
        assert record.outputs is not None
        return record.outputs

    def request_id(self, request: HTTPConnection | Scope) -> str | None:
        """The id to post outcomes for, after `predict` served this request from an experiment."""
        scope = request.scope if isinstance(request, HTTPConnection) else request
        return ExperimentService.request_id(scope)

    @staticmethod
    async def error_response(request: Request, exc: Exception) -> Response:
        """A modelserve error as a V2 JSON error response with its HTTP status.

        Install it in one line: `app.add_exception_handler(ModelServeError, ms.error_response)`
        (Starlette or FastAPI), or pass `exception_handlers=ms.exception_handlers`.
        """
        response = Response(
            protocol.error_body(str(exc)), status_code=http_status(exc), media_type="application/json"
        )
        if isinstance(exc, AuthError) and exc.status == 401:
            response.headers["www-authenticate"] = "Bearer"
        return response

    @property
    def exception_handlers(
        self,
    ) -> dict[type[Exception], Callable[[Request, Exception], Awaitable[Response]]]:
        """`{ModelServeError: error_response}`, for `Starlette(exception_handlers=...)` or FastAPI's."""
        return {ModelServeError: self.error_response}

    def app(self) -> Starlette:
        """A Starlette app serving the V2 API, the admin API and every service's routes."""
        app = Starlette(routes=self.routes, middleware=self.middleware, lifespan=self.lifespan)
        app.state.services = self.services
        app.state.modelserve = self
        return app


def task_name(task: object) -> str:
    """A background task's name for status and logs: its function's qualified name."""
    function = getattr(task, "func", task)  # functools.partial
    return str(getattr(function, "__qualname__", None) or repr(function))


def create_app(
    config: ServerConfig,
    *,
    store: StateStore | None = None,
    tracer_provider: TracerProvider | None = None,
    meter_provider: MeterProvider | None = None,
    features: FeatureSet | None = None,
    extensions: Sequence[ExtensionFactory] = (),
) -> Starlette:
    """The modelserve ASGI app: V2 inference API, admin API, every feature; loads models on startup."""
    return ModelServe(
        config,
        store=store,
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        features=features,
        extensions=extensions,
    ).app()
