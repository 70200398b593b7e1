"""A deadline for a request's headers: uvicorn's HTTP protocol that closes a connection whose headers are late.

uvicorn bounds the connections it holds (``limit_concurrency``) and the idle time between two requests
(``timeout_keep_alive``), but not the time a client takes to send its headers: connections that send a
header line now and then would hold every place for as long as they like, and then even ``/healthz`` gets
uvicorn's 503. Here a connection has ``header_timeout_s`` from its first byte (or its opening) to the end
of its headers; past it, it gets 408 and is closed. The request body has its own deadline
(:func:`cnnlab.serve.requests.read_body`).

A new connection joins the connections uvicorn counts against ``limit_concurrency`` only once its first
request's headers are complete: sockets opened and left silent neither lock others out while they wait for
their deadline nor hold up a graceful shutdown. What bounds their number is then the process's open-file limit;
in production a reverse proxy in front takes the slow clients (see the serve page of the docs).
"""

from __future__ import annotations

import asyncio
from typing import Any

#: Seconds a client has to send a request's headers by default.
DEFAULT_HEADER_TIMEOUT_S = 10.0

_LATE = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
         b"content-length: %d\r\n\r\n%s")
_LATE_BODY = b'{"error": "header-timeout", "detail": "the request headers did not arrive in time", "status": 408}'


class HeaderDeadline:
    """Mixin for uvicorn's HTTP protocols (httptools or h11): the headers of each request within a deadline."""

    header_timeout_s: float = DEFAULT_HEADER_TIMEOUT_S

    loop: asyncio.AbstractEventLoop
    cycle: Any
    transport: asyncio.Transport
    connections: set[Any]

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        self.connections.discard(self)  # counted once its first headers are complete
        self._counted = False
        self._deadline: asyncio.TimerHandle | None = None
        self._waiting_cycle: Any = None
        self._arm()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        if self._deadline is None and (cycle is None or cycle.response_complete):  # a new request begins
            self._arm()
        super().data_received(data)  # type: ignore[misc]
        if self._deadline is not None and self.cycle is not self._waiting_cycle:  # its headers are complete
            self._disarm()
            if not self._counted and not self.transport.is_closing():
                self._counted = True
                self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._waiting_cycle = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout_s, self._headers_late)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.transport.write(_LATE % (len(_LATE_BODY), _LATE_BODY))
        self.transport.close()


def protocol_class(header_timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, as uvicorn's ``auto`` picks, else h11) with the deadline."""
    base: type[asyncio.Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    except ImportError:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return type("HeaderDeadlineProtocol", (HeaderDeadline, base), {"header_timeout_s": float(header_timeout_s)})
