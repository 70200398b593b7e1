"""Connections that check where they go and stop on time: the downloader's network layer.

* :func:`blocked_address_kind` says why an IP address is refused by default (SSRF protection:
  private, loopback, link-local, multicast, reserved, unspecified and other non-public addresses,
  also when embedded in IPv6 forms).
* :class:`CheckedAdapter` is a ``requests`` transport adapter whose connections resolve the host,
  check every address, and connect to exactly the addresses checked (no second DNS lookup that
  could answer differently); it is used for every request, so every redirect hop is checked.
* :class:`Attempt` marks one request in flight on a thread: whether private hosts are allowed, and
  a watchdog that shuts the connection at the attempt's deadline.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import time
from typing import Any

import urllib3
import urllib3.connection
import urllib3.connectionpool
from requests.adapters import HTTPAdapter
from urllib3.util import connection as urllib3_connection

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def blocked_address_kind(address: str) -> str | None:
    """Why connecting to the IP ``address`` is refused by default (``"private"``, ``"loopback"``,
    ``"link-local"``, ``"multicast"``, ``"reserved"``, ``"unspecified"``, ``"site-local"``, ``"non-public"``), or
    ``None`` for a public address. IPv4 addresses embedded in IPv6 ones (``::ffff:10.0.0.1``,
    6to4, Teredo, NAT64) are judged by the IPv4 address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            kind = blocked_address_kind(str(embedded))
            if kind is not None:
                return kind
    for kind, hit in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        # fec0::/10: deprecated (RFC 3879) but still routed inside some sites; Python counts it global
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
        ("non-public", not ip.is_global),
    ):
        if hit:
            return kind
    return None


class BlockedAddress(urllib3.exceptions.NewConnectionError):
    """A connection refused before it was opened: the host resolves to a non-public address."""


class Attempt:
    """One request in flight on this thread: whether private hosts are allowed, and a watchdog that
    shuts the connection's socket at the deadline (a blocked read of a status line, header or body
    then ends at once, whatever the per-read timeout)."""

    def __init__(self, deadline_at: float, allow_private: bool) -> None:
        self.allow_private = allow_private
        self.conn: Any = None
        self.expired = False
        self._timer = threading.Timer(max(0.0, deadline_at - time.monotonic()), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> Attempt:
        _CURRENT.attempt = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        _CURRENT.attempt = None

    def _expire(self) -> None:
        self.expired = True
        sock = getattr(self.conn, "sock", None)
        if sock is None:
            return
        try:  # shut the connection down through a duplicate descriptor: safe for TLS sockets too
            dup = socket.socket(fileno=os.dup(sock.fileno()))
        except (OSError, ValueError):
            return
        try:
            dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            dup.close()


_CURRENT = threading.local()


def _open_checked(conn: Any) -> socket.socket:
    """Resolve, check every address, then connect to exactly the addresses checked (no second DNS
    lookup that could answer differently)."""
    attempt: Attempt | None = getattr(_CURRENT, "attempt", None)
    allow_private = attempt.allow_private if attempt is not None else False
    try:
        infos = socket.getaddrinfo(conn._dns_host, conn.port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, exc) from exc
    except UnicodeError as exc:  # the IDNA codec refuses the name (an empty or over-long label)
        raise urllib3.exceptions.NameResolutionError(conn.host, conn, socket.gaierror(str(exc))) from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            kind = blocked_address_kind(address)
            if kind is not None:
                raise BlockedAddress(conn, f"{conn.host} resolves to {address}, a {kind} address")
    error: Exception | None = None
    for address in addresses:
        try:
            return urllib3_connection.create_connection(
                (address, conn.port), conn.timeout, source_address=conn.source_address,
                socket_options=conn.socket_options,
            )  # fmt: skip
        except TimeoutError as exc:
            error = urllib3.exceptions.ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out. (connect timeout={conn.timeout})"
            )
            error.__cause__ = exc
        except OSError as exc:
            error = urllib3.exceptions.NewConnectionError(conn, f"Failed to establish a new connection: {exc}")
    raise error or urllib3.exceptions.NewConnectionError(conn, f"{conn.host} has no address")


def _register(conn: Any) -> None:
    attempt: Attempt | None = getattr(_CURRENT, "attempt", None)
    if attempt is not None:
        attempt.conn = conn


class _CheckedHTTPConnection(urllib3.connection.HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _open_checked(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _CheckedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        return _open_checked(self)

    def request(self, *args: Any, **kwargs: Any) -> None:
        _register(self)
        super().request(*args, **kwargs)


class _CheckedHTTPPool(urllib3.connectionpool.HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(urllib3.connectionpool.HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class CheckedAdapter(HTTPAdapter):
    """requests' adapter with connections that check addresses and obey the attempt's watchdog."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _CheckedHTTPPool, "https": _CheckedHTTPSPool}


def blocked_detail(exc: BaseException) -> str | None:
    """The message of a :class:`BlockedAddress` somewhere inside a requests exception."""
    seen: set[int] = set()
    todo: list[Any] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, BlockedAddress):
            return str(item).split(": ", 1)[-1]
        # ``reason`` is an exception in urllib3's errors but a string in ssl.SSLError: follow exceptions only
        linked = [getattr(item, "reason", None), item.__cause__, item.__context__, *getattr(item, "args", ())]
        todo.extend(a for a in linked if isinstance(a, BaseException))
    return None
