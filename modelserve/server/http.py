"""Small raw-ASGI helpers shared by the V2 and admin routes (kept off Starlette's Request on the hot path)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from starlette.types import Message, Receive, Send

from modelserve.errors import PayloadTooLarge, RequestError
from modelserve.server import heap

JSON_HEADERS = [(b"content-type", b"application/json")]
#: `body_buffer` puts the chosen byte of a body on this boundary (a cache line: more than any dtype needs).
BODY_ALIGNMENT = 64


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


def declared_length(scope_headers: Iterable[tuple[bytes, bytes]], limit: int) -> int | None:
    """The body's declared `Content-Length` (None: chunked); PayloadTooLarge when it exceeds `limit`."""
    declared = int_header(scope_headers, b"content-length")
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    return declared


def _chunk(message: Message, size_before: int, limit: int) -> bytes:
    """The body bytes of one received message, checked: a disconnect or a body past `limit` raises."""
    if message["type"] == "http.disconnect":
        raise RequestError("client disconnected before sending the whole body")
    chunk: bytes = message.get("body", b"")
    if size_before + len(chunk) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return chunk


async def _more_chunks(receive: Receive, size: int, limit: int) -> AsyncIterator[bytes]:
    """The body's next chunks, message by message, checked (`_chunk`), after `size` bytes read."""
    while True:
        message = await receive()
        chunk = _chunk(message, size, limit)
        size += len(chunk)
        yield chunk
        if not message.get("more_body", False):
            return


async def read_body(receive: Receive, scope_headers: Iterable[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole request body; PayloadTooLarge as soon as it is known to exceed `limit` bytes."""
    declared_length(scope_headers, limit)
    message = await receive()
    body = _chunk(message, 0, limit)
    if not message.get("more_body", False):
        return body  # the usual request: one message, no list and no join
    chunks = [body]
    async for chunk in _more_chunks(receive, len(body), limit):
        chunks.append(chunk)
    return b"".join(chunks)


def body_buffer(size: int, aligned_at: int = 0) -> memoryview:
    """`size` writable bytes for a request body, with byte `aligned_at` on a `BODY_ALIGNMENT` boundary
    (binary tensor data after a JSON header of that length is then used in place: numpy and
    onnxruntime copy unaligned data) and every page already in (`heap.populated_pages`). Blocking:
    call it in a thread, so that the event loop filling it (`read_into`) never takes a page fault (a
    fresh 58 MB body took ~30 ms of faults on the loop)."""
    start = -aligned_at % BODY_ALIGNMENT  # a mapping starts on a page
    return heap.populated_pages(max(1, start + size))[start : start + size]


async def read_into(receive: Receive, body: memoryview) -> memoryview:
    """Read a request body of exactly `len(body)` bytes (its declared Content-Length) into `body`.

    Each chunk is copied once and dropped at once, so the body is held once, never as its chunks plus
    their join, and the allocator hands the next chunk the memory the last one had (no page faults).
    """
    expected = len(body)
    size = 0
    async for chunk in _more_chunks(receive, 0, expected):
        body[size : size + len(chunk)] = chunk
        size += len(chunk)
    if size != expected:
        raise RequestError(f"the body has {size} bytes; its Content-Length says {expected}")
    return body


async def send_response(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
