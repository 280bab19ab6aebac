"""`create_app(config)`: the composition root. Builds every object, wires them, owns the lifespan."""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.routing import BaseRoute, Route

from modelserve.config import ServerConfig
from modelserve.errors import AuthError, ModelServeError
from modelserve.server import admin, inference
from modelserve.serving.registry import ModelRegistry
from modelserve.serving.repository import ModelRepository
from modelserve.state.store import FileStateStore, MemoryStateStore, StateStore

log = logging.getLogger("modelserve.server")


@dataclass(slots=True, kw_only=True)
class Services:
    """Everything the routes and middleware use, built once by `create_app` and passed in."""

    config: ServerConfig
    registry: ModelRegistry
    store: StateStore
    observers: list[inference.Observer] = field(default_factory=list)
    status_extensions: list[Callable[[str], dict[str, Any]]] = field(default_factory=list)
    admin_route_factories: list[Callable[[Services], list[Route]]] = field(default_factory=list)
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


def build_services(config: ServerConfig, *, store: StateStore | None = None) -> Services:
    repository = ModelRepository(config.repository)
    if store is None:
        store = FileStateStore(config.state_dir) if config.state_dir is not None else MemoryStateStore()
    return Services(config=config, registry=ModelRegistry(repository, store), store=store)


def create_app(config: ServerConfig, *, store: StateStore | None = None) -> Starlette:
    """The modelserve ASGI app: V2 inference API, admin API; loads models warm on startup."""
    services = build_services(config, store=store)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for name in services.expected_models():
            try:
                await services.registry.load_model(name)
            except ModelServeError as exc:  # one broken model must not keep the others down
                services.load_errors[name] = str(exc)
                log.error("model %s not loaded: %s", name, exc)
        services.started = True
        yield
        services.started = False

    routes: list[BaseRoute] = [*inference.routes(services), *admin.routes(services)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.services = services
    return app
