"""Small raw-ASGI helpers shared by the V2 and admin routes (kept off Starlette's Request on the hot path)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Receive, Send

from modelserve.errors import PayloadTooLarge, RequestError

JSON_HEADERS = [(b"content-type", b"application/json")]


def header(scope_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of a (lower-case) header, or None."""
    for key, value in scope_headers:
        if key == name:
            return value
    return None


def int_header(scope_headers: Iterable[tuple[bytes, bytes]], name: bytes) -> int | None:
    raw = header(scope_headers, name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 18:  # int() would also take "1_0", " 10", "+5"
        raise RequestError(f"header {name.decode()} must be a non-negative integer in plain digits")
    return int(raw)


async def read_body(receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole request body; PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    declared = int_header(scope_headers, b"content-length")
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    message = await receive()
    body = message.get("body", b"")
    if not message.get("more_body", False):
        if len(body) > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        result: bytes = body
        return result
    chunks = [body]
    size = len(body)
    while message.get("more_body", False):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_chunks(
    receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]], limit: int
) -> list[bytes]:
    """The request body as the chunks it arrived in (join them off the event loop: a large join is a
    copy); PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    declared = int_header(scope_headers, b"content-length")
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise RequestError("client disconnected before sending the whole body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks


async def send_response(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
