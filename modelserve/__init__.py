"""modelserve: safe model updates, in-process.

Warm blue/green ONNX slots, flags, canary, shadow, gated rollouts and experiments behind the Open
Inference Protocol (KServe V2). Start a server with `modelserve serve REPO`, or mount it in a Starlette
app with `create_app` and the middleware.
"""

from __future__ import annotations

__version__ = "0.1.0"
