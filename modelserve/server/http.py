"""Small raw-ASGI helpers shared by the V2 and admin routes (kept off Starlette's Request on the hot path)."""

from __future__ import annotations

from collections.abc import Iterable

from starlette.types import Message, Receive, Send

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


def _refuse_declared_excess(scope_headers: Iterable[tuple[bytes, bytes]], limit: int) -> None:
    """PayloadTooLarge when the body's declared `Content-Length` exceeds `limit` (nothing read yet)."""
    declared = int_header(scope_headers, b"content-length")
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")


def _chunk(message: Message, size_before: int, limit: int) -> bytes:
    """The body bytes of one received message, checked: a disconnect or a body past `limit` raises."""
    if message["type"] == "http.disconnect":
        raise RequestError("client disconnected before sending the whole body")
    chunk: bytes = message.get("body", b"")
    if size_before + len(chunk) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return chunk


async def _read_rest(receive: Receive, chunks: list[bytes], limit: int) -> list[bytes]:
    """`chunks` (the body so far) with the rest of the body appended, message by message."""
    size = sum(map(len, chunks))
    while True:
        message = await receive()
        chunk = _chunk(message, size, limit)
        size += len(chunk)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks


async def read_chunks(
    receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]], limit: int
) -> list[bytes]:
    """The request body as the chunks it arrived in (join them off the event loop: a large join is a
    copy); PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    _refuse_declared_excess(scope_headers, limit)
    return await _read_rest(receive, [], limit)


async def read_body(receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole request body (`read_chunks` joined); PayloadTooLarge as soon as it is known to exceed
    `limit` bytes."""
    _refuse_declared_excess(scope_headers, limit)
    message = await receive()
    body = _chunk(message, 0, limit)
    if not message.get("more_body", False):
        return body  # the usual request: one message, no list and no join
    return b"".join(await _read_rest(receive, [body], limit))


async def send_response(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
