"""uvicorn's h11 protocol with a deadline on request headers (answered 408, then closed).

uvicorn bounds the idle time between keep-alive requests (``timeout_keep_alive``)
but not the time a client takes to send a request line and headers: a client
sending a byte a second holds a connection, and its buffer, for as long as it
likes. Here a timer starts when a connection opens, and again when the first
bytes of a later request on a kept-alive connection arrive; it stops as soon
as h11 has parsed a complete request head. The body has its own deadline,
enforced in the ASGI guard (service/http_guard.py), where the app reads it.

h11 is what ``uvicorn.Config(http="auto")`` picks without httptools (not a
dependency here); the daemon pins this class so the deadline always holds.
"""
from __future__ import annotations

import asyncio
import json
from typing import Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def timeout_response(timeout_s: float) -> bytes:
    """A complete HTTP/1.1 408 answer; written raw, as no request exists for h11 to answer."""
    body = json.dumps({"detail": f"request headers not received within http.header_timeout_s={timeout_s:g}"})
    head = ("HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return (head + body).encode()


class HeaderTimeoutProtocol(H11Protocol):
    """H11Protocol whose request heads must arrive within ``header_timeout_s``.

    Configured per server by :func:`header_timeout_protocol`, as uvicorn builds
    one protocol per connection from a class and passes it only its config.
    """

    header_timeout_s: float = 10.0
    on_header_timeout: Callable[[], None] = staticmethod(lambda: None)

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()  # a connection that never sends a byte is bounded too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Only while waiting for a request head: bytes of a pipelined request
        # that arrive during a response are timed once that request's turn comes.
        if self.conn.their_state is h11.IDLE:
            self._arm()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is complete (or the connection is done with)
        elif self.conn.trailing_data[0]:
            self._arm()  # part of the next pipelined request is buffered already

    def _arm(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self.transport.write(timeout_response(self.header_timeout_s))
        self.transport.close()
        self.on_header_timeout()


def header_timeout_protocol(timeout_s: float, on_timeout: Callable[[], None] = lambda: None
                            ) -> type[HeaderTimeoutProtocol]:
    """The protocol class to pass as ``uvicorn.Config(http=...)``; ``on_timeout`` runs per 408 (for metrics)."""
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,),
                {"header_timeout_s": timeout_s, "on_header_timeout": staticmethod(on_timeout)})
