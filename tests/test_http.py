"""The raw-ASGI body readers (`server/http.py`), driven by real clients over a real uvicorn socket."""

from __future__ import annotations

import hashlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from starlette.types import Message, Receive, Scope, Send

from modelserve.errors import ModelServeError, http_status
from modelserve.server.http import (
    BODY_ALIGNMENT,
    body_buffer,
    declared_length,
    read_body,
    read_into,
    send_response,
)
from modelserve.testing import RunningServer, serve

LIMIT = 1 << 20


class ReaderApp:
    """Reads each request's body with the reader its path names (`/into`: `read_into` a `body_buffer`)
    and answers what it saw: the body's size and digest, how many times it called `receive()`,
    whether `read_body` handed back the very bytes of the one message (no copy), and any error as its
    status."""

    def __init__(self) -> None:
        self.errors: list[Exception] = []
        self.failed = threading.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        received: list[Message] = []

        async def counted() -> Message:
            message = await receive()
            received.append(message)
            return message

        try:
            if scope["path"] == "/into":
                size = declared_length(scope["headers"], LIMIT)
                assert size is not None
                body = bytes(await read_into(counted, body_buffer(size)))
            else:
                body = await read_body(counted, scope["headers"], LIMIT)
        except ModelServeError as exc:
            self.errors.append(exc)
            self.failed.set()
            await send_response(send, http_status(exc), orjson.dumps({"error": str(exc)}), [])
            return
        answer = {
            "size": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "receives": len(received),
            "same_bytes": len(received) == 1 and body is received[0]["body"],
        }
        await send_response(send, 200, orjson.dumps(answer), [])


@pytest.fixture
def reader() -> Iterator[tuple[ReaderApp, RunningServer]]:
    app = ReaderApp()
    with serve(app, lifespan="off") as server:
        yield app, server


def _pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def _answer(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_a_one_message_body_is_returned_as_is_without_a_join(reader: tuple[ReaderApp, RunningServer]) -> None:
    _, server = reader
    answer = _answer(httpx.post(server.url + "/body", content=b'{"a": 1}'))
    assert answer == {
        "size": 8,
        "sha256": hashlib.sha256(b'{"a": 1}').hexdigest(),
        "receives": 1,
        "same_bytes": True,
    }


def test_a_chunked_body_in_many_messages_is_read_whole_in_order(
    reader: tuple[ReaderApp, RunningServer],
) -> None:
    _, server = reader
    data = bytes(range(256)) * 2000  # 512 kB, sent chunked in 7 kB pieces
    answer = _answer(httpx.post(server.url + "/body", content=_pieces(data, 7000)))
    assert answer["size"] == len(data) and answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["receives"] > 1


@pytest.mark.parametrize("path", ["/body", "/into"])
def test_a_body_of_declared_length_in_many_messages_is_read_whole_in_order(
    reader: tuple[ReaderApp, RunningServer], path: str
) -> None:
    _, server = reader
    data = bytes(range(251)) * 4000  # 1 MB: more than one socket read
    answer = _answer(httpx.post(server.url + path, content=data))
    assert answer["size"] == len(data) and answer["sha256"] == hashlib.sha256(data).hexdigest()
    assert answer["receives"] > 1


@pytest.mark.parametrize("path", ["/body", "/into"])
def test_a_declared_body_over_the_limit_is_refused_before_it_is_read(
    reader: tuple[ReaderApp, RunningServer], path: str
) -> None:
    _, server = reader
    declared = httpx.post(server.url + path, content=b"x" * (LIMIT + 1))
    assert declared.status_code == 413 and "exceeds the limit" in declared.json()["error"]


def test_a_chunked_body_over_the_limit_is_refused(reader: tuple[ReaderApp, RunningServer]) -> None:
    _, server = reader
    chunked = httpx.post(server.url + "/body", content=_pieces(b"x" * (LIMIT + 1), 65536))
    assert chunked.status_code == 413


@pytest.mark.parametrize("path", ["/body", "/into"])
def test_a_client_gone_mid_body_is_a_request_error(
    reader: tuple[ReaderApp, RunningServer], path: str
) -> None:
    app, server = reader
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode() + b"{" * 10)
    assert app.failed.wait(10)
    assert [http_status(e) for e in app.errors] == [400] and "disconnected" in str(app.errors[0])


@pytest.mark.parametrize("aligned_at", [0, 1, 110, 4095, 4096, 4097])
def test_a_body_buffer_puts_the_chosen_byte_on_the_boundary(aligned_at: int) -> None:
    buffer = body_buffer(10_000, aligned_at=aligned_at)
    assert len(buffer) == 10_000 and not buffer.readonly
    address = np.frombuffer(buffer, dtype=np.uint8).ctypes.data
    assert (address + aligned_at) % BODY_ALIGNMENT == 0
