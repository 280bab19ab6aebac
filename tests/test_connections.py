"""The guarded uvicorn protocols (`server/connections.py`): how a request body reaches the app."""

from __future__ import annotations

import hashlib
import http.client
import socket
from collections.abc import Iterator
from typing import Any, ClassVar

import httpx
import orjson
import pytest
from starlette.types import Receive, Scope, Send

from modelserve.server import connections
from modelserve.server.http import send_response
from modelserve.testing import RunningServer, serve

pytestmark = pytest.mark.skipif(not connections.HAVE_HTTPTOOLS, reason="the httptools protocol only")


class RecordingProtocol(connections.GuardedHttpToolsProtocol):  # type: ignore[name-defined,misc]
    """The guarded protocol, keeping every body chunk the parser hands it (one request at a time)."""

    parsed: ClassVar[list[bytes]] = []

    def on_body(self, body: bytes) -> None:
        self.parsed.append(body)
        super().on_body(body)


async def echo_messages(scope: Scope, receive: Receive, send: Send) -> None:
    """Receives the body message by message and answers how each message matches the parser's chunks:
    `handed_over` counts messages that are one parser chunk, the very object (not a copy)."""
    if scope["type"] != "http":
        return
    bodies = []
    more = True
    while more:
        message = await receive()
        bodies.append(message.get("body", b""))
        more = message.get("more_body", False)
    parsed = [chunk for chunk in RecordingProtocol.parsed if chunk]
    handed_over = copied = position = 0
    for body in filter(None, bodies):
        start, size = position, 0
        while size < len(body):  # the parser chunks this message holds, in order
            size += len(parsed[position])
            position += 1
        assert size == len(body) and body == b"".join(parsed[start:position])
        if position - start == 1:
            handed_over += body is parsed[start]
            copied += body is not parsed[start]
    answer = {
        "sha256": hashlib.sha256(b"".join(bodies)).hexdigest(),
        "handed_over": handed_over,
        "copied": copied,
    }
    await send_response(send, 200, orjson.dumps(answer), [])


@pytest.fixture
def recording() -> Iterator[RunningServer]:
    RecordingProtocol.parsed.clear()
    with serve(echo_messages, http=RecordingProtocol, lifespan="off") as server:
        yield server


def test_body_chunks_reach_the_app_as_the_parsers_own_bytes_never_copied(recording: RunningServer) -> None:
    data = bytes(range(256)) * 16_384  # 4 MB: many socket reads
    response = httpx.post(recording.url + "/", content=data, timeout=30)
    answer: dict[str, Any] = response.json()
    assert answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["copied"] == 0 and answer["handed_over"] >= 1


def test_a_chunked_body_of_many_small_pieces_arrives_whole(recording: RunningServer) -> None:
    data = bytes(range(256)) * 4096  # 1 MB in 1,000-byte chunks: several per socket read, accumulated

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(data), 1000):
            yield data[start : start + 1000]

    answer = httpx.post(recording.url + "/", content=pieces(), timeout=30).json()
    assert answer["sha256"] == hashlib.sha256(data).hexdigest() and answer["copied"] == 0


async def refuse_uploads(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 413 and closes without reading the body, as the V2 routes do for a body over the limit."""
    if scope["type"] != "http":
        return
    await send_response(send, 413, b'{"error": "too large"}', [(b"connection", b"close")])


@pytest.fixture
def refusing() -> Iterator[RunningServer]:
    with serve(refuse_uploads, http=connections.GuardedHttpProtocol, lifespan="off") as server:
        yield server


def _upload(server: RunningServer, size: int) -> int:
    """POST `size` bytes with Python's http.client, which sends the whole body before it reads."""
    connection = http.client.HTTPConnection(server.host, server.port, timeout=30)
    try:
        connection.request("POST", "/", body=b"x" * size)
        return connection.getresponse().status
    finally:
        connection.close()


def _answer_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes; a reset fails the test."""
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("protocol", ["GuardedHttpProtocol", "GuardedH11Protocol"])
def test_a_client_still_uploading_reads_the_413_rather_than_a_reset(protocol: str) -> None:
    with serve(refuse_uploads, http=getattr(connections, protocol), lifespan="off") as server:
        assert [_upload(server, size) for size in (2_000_000, 30_000_000)] == [413, 413]


def test_an_oversized_header_is_answered_431_and_the_connection_ends_cleanly(refusing: RunningServer) -> None:
    with socket.create_connection((refusing.host, refusing.port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nx-big: " + b"v" * 2_000_000 + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        assert _answer_until_closed(sock).startswith(b"HTTP/1.1 431")


def test_lingering_ends_after_its_byte_bound(
    refusing: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections.GuardedHttpProtocol, "linger_bytes", 1_000_000)
    with pytest.raises(OSError):  # the server stopped reading: the rest of the upload meets a reset
        _upload(refusing, 64_000_000)


def test_lingering_ends_after_its_time_bound(
    refusing: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(connections.GuardedHttpProtocol, "linger_s", 0.2)
    with socket.create_connection((refusing.host, refusing.port), timeout=30) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        # ... and never sends the rest nor closes: the server closes after linger_s, not body_timeout_s
        assert _answer_until_closed(sock).startswith(b"HTTP/1.1 413")
