"""uvicorn's HTTP protocols with read deadlines: a slow or silent client cannot hold a connection.

uvicorn bounds idle keep-alive connections, but not a client that opens a connection and sends its
request slowly (slow-loris): headers trickled a byte at a time, or a body that never finishes. Here
every connection gets

- a **header deadline**: the request line and headers must arrive within `header_timeout_s` of the
  connection opening (or of the first byte of the next request on a kept-alive connection), else
  it is answered 408 and closed;
- a **body idle timeout**: while a body is being received, each chunk must arrive within
  `body_timeout_s` of the previous one, else the connection is closed (the handler sees a
  disconnect);
- a **header size bound** (httptools; h11 bounds it itself with `h11_max_incomplete_event_size`):
  more than `max_header_bytes` of request line and headers is answered 431 and closed, before
  anything reaches the application. The raw bytes are counted before they are parsed, so a huge
  header value is cut off as it arrives (httptools joins a value piece by piece: 8 MB cost 200 ms).

`uvicorn_options()` is what `modelserve serve` passes to uvicorn: these protocols plus keep-alive and
concurrency bounds. The timeouts are class attributes (`configure`) so worker processes built from
the same options agree.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from modelserve.server.lingering import Lingering

#: Defaults: generous for real clients on slow links, short enough that thousands of stalled
#: connections cannot pile up.
HEADER_TIMEOUT_S = 10.0
BODY_TIMEOUT_S = 30.0
MAX_HEADER_BYTES = 64 * 1024
KEEP_ALIVE_S = 5.0
#: Raw bytes of request line and headers allowed beyond twice `max_header_bytes` (separators, the
#: start of a pipelined body) before a connection is answered 431 without parsing more.
RAW_HEADER_SLACK = 16 * 1024
#: Connections + running requests beyond which uvicorn answers 503 at once instead of queueing.
MAX_CONCURRENCY = 4096


def _raw_response(status: int, reason: bytes, message: bytes) -> bytes:
    body = b'{"error": "' + message + b'"}'
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
        % (status, reason, len(body))
    ) + body


_TIMEOUT_408 = _raw_response(408, b"Request Timeout", b"request headers not received in time")
_TOO_LARGE_431 = _raw_response(431, b"Request Header Fields Too Large", b"request headers too large")


class _Deadlines(Lingering):
    """The read-deadline timer both protocols share (one timer per connection, on the event loop),
    and their lingering close (`server/lingering.py`)."""

    header_timeout_s = HEADER_TIMEOUT_S
    body_timeout_s = BODY_TIMEOUT_S
    max_header_bytes = MAX_HEADER_BYTES

    loop: asyncio.AbstractEventLoop
    transport: asyncio.Transport
    _deadline: asyncio.TimerHandle | None
    _in_headers: bool

    def _arm(self, seconds: float, *, in_headers: bool) -> None:
        self._disarm()
        self._in_headers = in_headers
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._in_headers:  # nothing reached the application yet: it is ours to answer
            self.transport.write(_TIMEOUT_408)
        self._close_now()  # a body in progress: the handler's receive() sees a disconnect


class GuardedH11Protocol(_Deadlines, H11Protocol):
    """uvicorn's h11 protocol with the header deadline and the body idle timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = None
        self._in_headers = True

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(self._linger_setup(transport))
        self._arm(self.header_timeout_s, in_headers=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._linger_done()
        super().connection_lost(exc)

    def _client_still_sending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._discard(data)
            return
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm(self.body_timeout_s, in_headers=False)  # idle timeout: every chunk resets it
        elif state is h11.IDLE:
            if self._deadline is None:  # the first bytes of a request: its headers are now due
                self._arm(self.header_timeout_s, in_headers=True)
        else:  # the request is complete (or the connection is closing): the response is ours
            self._disarm()

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timer covers the idle time until the next request
        super().on_response_complete()


# Module-level classes, so `serve --workers N` can hand them to its spawned worker processes (pickled
# by name).
try:
    from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # the `fast` extra is not installed: h11 serves
    HAVE_HTTPTOOLS = False
else:
    HAVE_HTTPTOOLS = True

    class GuardedHttpToolsProtocol(_Deadlines, HttpToolsProtocol):
        """uvicorn's httptools protocol with both deadlines and the header size bound."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._deadline = None
            self._in_headers = True
            self._header_bytes = 0
            self._raw_header_bytes = 0  # bytes received since the last request's headers completed
            self._reading_headers = True
            self._too_large = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(self._linger_setup(transport))
            self._arm(self.header_timeout_s, in_headers=True)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            self._linger_done()
            super().connection_lost(exc)

        def _client_still_sending(self) -> bool:
            headers_due = self._reading_headers and (self._raw_header_bytes > 0 or self._too_large)
            return headers_due or (self.cycle is not None and self.cycle.more_body)

        def data_received(self, data: bytes) -> None:
            if self._lingering:
                self._discard(data)
                return
            if self._too_large:
                return
            if self._reading_headers:
                # Counted before parsing: httptools joins a header value piece by piece (an 8 MB
                # value cost 200 ms of event loop), so an oversized one must never reach it.
                self._raw_header_bytes += len(data)
                if self._raw_header_bytes > 2 * self.max_header_bytes + RAW_HEADER_SLACK:
                    self._too_large = True
            if not self._too_large:
                super().data_received(data)
            if self._too_large and not self.transport.is_closing():
                self._disarm()
                self.transport.write(_TOO_LARGE_431)
                self.transport.close()

        def _count(self, size: int) -> bool:
            self._header_bytes += size
            if self._header_bytes > self.max_header_bytes:
                self._too_large = True
            return not self._too_large

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._header_bytes = 0
            if self._deadline is None:
                self._arm(self.header_timeout_s, in_headers=True)

        def on_url(self, url: bytes) -> None:
            if self._count(len(url)):
                super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            if self._count(len(name) + len(value) + 4):
                super().on_header(name, value)

        def on_headers_complete(self) -> None:
            if self._too_large:
                return  # never reaches the application; data_received answers 431
            self._reading_headers = False
            super().on_headers_complete()
            self._arm(self.body_timeout_s, in_headers=False)

        def on_body(self, body: bytes) -> None:
            if self._too_large:
                return
            cycle = self.cycle
            if cycle.body or cycle.response_complete or self.parser.should_upgrade():
                if not isinstance(cycle.body, bytearray):  # a handed-over chunk not yet taken: accumulate
                    cycle.body = bytearray(cycle.body)
                super().on_body(body)
            else:
                # The application took everything before: hand it the parser's bytes as they are.
                # uvicorn would append them to a bytearray and receive() copy that out again, two
                # copies of every chunk on the event loop (bytes(a bytes object) is that object).
                cycle.body = body  # type: ignore[assignment]
                if len(body) > HIGH_WATER_LIMIT:
                    self.flow.pause_reading()
                cycle.message_event.set()
            self._arm(self.body_timeout_s, in_headers=False)

        def on_message_complete(self) -> None:
            if self._too_large:
                return
            self._disarm()
            self._reading_headers = True  # the next request on this connection starts with headers
            self._raw_header_bytes = 0
            super().on_message_complete()

        def on_response_complete(self) -> None:
            self._disarm()
            super().on_response_complete()


#: The protocol `serve` uses: httptools when installed (the `fast` extra), else h11.
GuardedHttpProtocol: type[asyncio.Protocol] = (
    GuardedHttpToolsProtocol if HAVE_HTTPTOOLS else GuardedH11Protocol
)


def configure(*, header_timeout_s: float, body_timeout_s: float, max_header_bytes: int) -> None:
    """Set the deadlines and the header bound every guarded connection uses (process-wide)."""
    for protocol in {GuardedHttpProtocol, GuardedH11Protocol}:
        protocol.header_timeout_s = header_timeout_s  # type: ignore[attr-defined]
        protocol.body_timeout_s = body_timeout_s  # type: ignore[attr-defined]
        protocol.max_header_bytes = max_header_bytes  # type: ignore[attr-defined]


def uvicorn_options(*, max_header_bytes: int = MAX_HEADER_BYTES) -> dict[str, Any]:
    """uvicorn keyword arguments: guarded protocol, keep-alive, concurrency and header bounds."""
    return {
        "http": GuardedHttpProtocol,
        "timeout_keep_alive": KEEP_ALIVE_S,
        "limit_concurrency": MAX_CONCURRENCY,
        "h11_max_incomplete_event_size": max_header_bytes,
    }
