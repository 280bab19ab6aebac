"""modelserve: safe model updates, in-process.

Warm blue/green ONNX slots, flags, canary, shadow, gated rollouts and experiments behind the Open
Inference Protocol (KServe V2). Start a server with `modelserve serve REPO`, or embed it in a Starlette
app with `ModelServe(config)`: its `middleware`, `routes`, `lifespan` and `predict`.

The public API is the names in `__all__` (pinned by `tests/test_public_api.py`); everything else is
importable from its module but may change. `ModelServe` and `create_app` load lazily, so importing
the configuration or the errors never loads onnxruntime or the server.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import TYPE_CHECKING

from modelserve.config import ServerConfig
from modelserve.errors import (
    AuthError,
    ConfigError,
    Conflict,
    DeadlineExceeded,
    InferenceError,
    LoadError,
    ModelServeError,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    UnsupportedMediaType,
)
from modelserve.routing.decision import RouteDecision

try:  # the one version source is pyproject.toml, read back from the installed distribution
    __version__ = _distribution_version("modelserve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AuthError",
    "ConfigError",
    "Conflict",
    "DeadlineExceeded",
    "InferenceError",
    "LoadError",
    "ModelServe",
    "ModelServeError",
    "NotFound",
    "NotReady",
    "PayloadTooLarge",
    "RequestError",
    "RequestTimeout",
    "RouteDecision",
    "ServerConfig",
    "UnsupportedMediaType",
    "create_app",
]

if TYPE_CHECKING:
    from modelserve.server.app import ModelServe, create_app


def __getattr__(name: str) -> object:
    # Lazy: the server (and onnxruntime) load only when the app is asked for.
    if name in ("ModelServe", "create_app"):
        from modelserve.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'modelserve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
