"""modelserve: safe model updates, in-process.

Warm blue/green ONNX slots, flags, canary, shadow, gated rollouts and experiments behind the Open
Inference Protocol (KServe V2). Start a server with `modelserve serve REPO`, or embed it in a Starlette
app with `ModelServe(config)`: its `middleware`, `routes`, `lifespan` and `predict`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["ModelServe", "ServerConfig", "create_app"]

if TYPE_CHECKING:
    from modelserve.config import ServerConfig
    from modelserve.server.app import ModelServe, create_app


def __getattr__(name: str) -> Any:
    # Lazy: `import modelserve` stays cheap for tools that only need a submodule.
    if name == "ServerConfig":
        from modelserve.config import ServerConfig

        return ServerConfig
    if name in ("ModelServe", "create_app"):
        from modelserve.server import app

        return getattr(app, name)
    raise AttributeError(f"module 'modelserve' has no attribute {name!r}")
