"""``cnnlab serve``'s access log: ASGI middleware writing one JSON line per request and counting it."""

from __future__ import annotations

import datetime
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cnnlab.serve.state import ServerState

#: Paths that the metrics and the access log name as they are (others: "other", so labels stay few).
KNOWN_PATHS = ("/", "/v1/predict", "/v1/model", "/healthz", "/readyz", "/metrics", "/docs", "/openapi.json")


ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


class AccessLog:
    """ASGI middleware: one JSON line per request on ``stream`` and the request counters and latency."""

    def __init__(self, app: ASGIApp, state: ServerState, stream: Any = None) -> None:
        self.app = app
        self.state = state
        self.stream = stream or sys.stdout

    async def __call__(self, scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0

        async def watch(message: Any) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = int(message["status"])
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            seconds = time.perf_counter() - started
            path = scope.get("path", "")
            label = path if path in KNOWN_PATHS else "other"
            method = str(scope.get("method", ""))
            self.state.metrics.request(label, method, status, seconds)
            extra = scope.get("cnnlab", {})
            headers = dict(scope.get("headers") or [])
            client = scope.get("client")
            record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
                      "client": client[0] if client else None, "method": method, "path": path[:200],
                      "status": status, "duration_ms": round(seconds * 1000, 3), "bytes_sent": sent,
                      "content_length": _int(headers.get(b"content-length")),
                      **{k: v for k, v in extra.items() if k in ("images", "reason")}}
            try:
                self.stream.write(json.dumps(record) + "\n")
                self.stream.flush()
            except (OSError, ValueError):  # a closed stdout must not take the server down
                pass


def _int(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None
