"""Pure ASGI: the request limits every route shares, enforced before any handler or cache sees them.

- **Header bytes**: more than `max_header_bytes` of header names and values is answered 431. Caches
  keyed on header values (flag contexts, experiment segments) then never see large values, whatever
  server runs the app (uvicorn's protocol has its own, earlier bound when `serve` runs it).
- **Body bytes**: a declared `Content-Length` above `max_body_bytes` is answered 413 before the
  body is read; a body without one (chunked) is counted as it is received, and the handler's read
  fails with `PayloadTooLarge` (413) the moment it passes the limit. Every route gets this, including
  the ones that read their body through Starlette (`/v2/repository/index`, the admin API).
- A `Content-Length` that is not plain digits (``1_0``, ``+5``) is answered 400.

Answers are V2 JSON errors. Cost on the hot path: one pass over the header list.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelserve.errors import PayloadTooLarge

#: Default bound on all header names and values of one request, in bytes.
MAX_HEADER_BYTES = 64 * 1024


async def _answer(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:  # the body is not wanted: closing the connection stops the upload
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimitsMiddleware:
    """Header and body byte limits for every HTTP request (see the module docstring)."""

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_header_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = 0
        declared: bytes | None = None
        for name, value in scope["headers"]:
            size += len(name) + len(value)
            if name == b"content-length":
                declared = value
        if size > self.max_header_bytes:
            await _answer(send, 431, f"request headers exceed {self.max_header_bytes} bytes")
            return
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, "Content-Length must be a non-negative integer")
                return
            if int(declared) > self.max_body_bytes:
                await _answer(
                    send,
                    413,
                    f"request body of {int(declared)} bytes exceeds the limit of {self.max_body_bytes} bytes",
                )
                return
            # The server reads exactly Content-Length bytes: nothing more to count.
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send)

    async def _counted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A body of unknown length: count it as the handler reads it."""
        limit = self.max_body_bytes
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except PayloadTooLarge as exc:  # a handler that did not map it itself
            if started:
                raise
            await _answer(send, 413, str(exc))
