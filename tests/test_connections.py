"""The guarded uvicorn protocols (`server/connections.py`): how a request body reaches the app."""

from __future__ import annotations

import hashlib
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
