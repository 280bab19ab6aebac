"""Lingering close: an answer sent while the client is still uploading reaches it.

A 413 (body too large) or 431 (headers too large) is sent, and the connection closed, while the
client may still be sending. Closing a socket with unread bytes pending makes the kernel reset the
connection, and a client still writing its body then fails on that write and never reads the answer
(Python's `http.client`, hence `requests`: `BrokenPipeError` instead of the 413). So, as nginx does,
such a close first ends our side of the connection (FIN after the answer), then reads and drops what
the client still sends until it closes, for at most `linger_s` seconds and `linger_bytes` bytes; only
then is the socket closed. Anything sent past those bounds may still meet a reset.

`Lingering` is mixed into the guarded protocols (`server/connections.py`): the transport uvicorn's
protocol sees is a `LingeringTransport`, whose `close()` lingers when the protocol says the client is
still sending (`_client_still_sending`), and closes at once otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

#: Defaults: a client a few MB over the limit on a fast link gets its answer; a client that never
#: stops costs at most this much reading.
LINGER_S = 5.0
LINGER_BYTES = 64 * 1024 * 1024


class LingeringTransport:
    """The transport as uvicorn's protocol sees it: every call goes to the real one, but `close()`
    is the protocol's `_close_or_linger()`, and a lingering connection counts as closing."""

    def __init__(self, transport: asyncio.Transport, protocol: Lingering) -> None:
        self._transport = transport
        self._protocol = protocol
        # What every request calls, bound once: `__getattr__` would look them up on each call.
        self.write = transport.write
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def close(self) -> None:
        self._protocol._close_or_linger()

    def is_closing(self) -> bool:
        return self._protocol._lingering or self._transport.is_closing()


class Lingering:
    """Lingering close for a uvicorn protocol (call `_linger_setup` in `connection_made`, discard
    while `_lingering` in `data_received`, `_linger_done` in `connection_lost`)."""

    linger_s = LINGER_S
    linger_bytes = LINGER_BYTES

    loop: asyncio.AbstractEventLoop
    _raw_transport: asyncio.Transport
    _lingering: bool
    _lingered_bytes: int
    _linger_timer: asyncio.TimerHandle | None

    def _linger_setup(self, transport: asyncio.Transport) -> asyncio.Transport:
        """The transport to hand uvicorn's protocol in place of `transport`."""
        self._raw_transport = transport
        self._lingering = False
        self._lingered_bytes = 0
        self._linger_timer = None
        return cast(asyncio.Transport, LingeringTransport(transport, self))

    def _client_still_sending(self) -> bool:
        """Whether the current request has not arrived whole (headers or body still due)."""
        raise NotImplementedError

    def _close_or_linger(self) -> None:
        transport = self._raw_transport
        if self._lingering or transport.is_closing():
            return
        if not self._client_still_sending():
            transport.close()
            return
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()  # after the answer: the client reads it, then an end of stream
        transport.resume_reading()  # uvicorn pauses reading while a body waits for the app
        self._linger_timer = self.loop.call_later(self.linger_s, transport.close)

    def _close_now(self) -> None:
        """Close without lingering (a client that stalled has nothing more to send)."""
        self._raw_transport.close()

    def _discard(self, data: bytes) -> None:
        """Drop what a lingering connection receives; close once it is more than `linger_bytes`."""
        self._lingered_bytes += len(data)
        if self._lingered_bytes > self.linger_bytes:
            self._raw_transport.close()

    def _linger_done(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
