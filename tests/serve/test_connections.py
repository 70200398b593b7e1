"""The header deadline of `cnnlab serve`: connections that never finish their headers are answered 408 and closed,
while the server goes on answering (tests/serve/conftest.py: the server's header timeout is short)."""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit

import httpx


def _connect(server: Any) -> socket.socket:
    parts = urlsplit(server.url)
    return socket.create_connection((parts.hostname, parts.port), timeout=60)


def _until_closed(sock: socket.socket) -> bytes:
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


def test_connections_that_never_finish_their_headers_get_408_and_are_closed(server: Any) -> None:
    held = [_connect(server) for _ in range(40)]
    try:
        for k, sock in enumerate(held):
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\n" if k % 2 else b"")  # half send nothing at all
        assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200  # others are served meanwhile
        answers = [_until_closed(sock) for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:40] for a in answers}
    assert b'"error": "header-timeout"' in answers[0]
    assert httpx.get(server.url + "/healthz", timeout=30).status_code == 200


def test_the_next_request_on_a_kept_alive_connection_has_the_same_deadline(server: Any) -> None:
    with _connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while not first.rstrip().endswith(b"}"):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # the headers of a second request, never finished
        assert _until_closed(sock).startswith(b"HTTP/1.1 408")
