"""What ``cnnlab serve``'s web process holds and how it refuses a request: :class:`ServerState` (limits,
bytes in flight, counters), :class:`RequestRefused` and the JSON body of every error."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi.responses import JSONResponse

from cnnlab.serve.config import ServeConfig
from cnnlab.serve.metrics import ServeMetrics

#: Seconds a client is asked to wait before trying again when the server is full.
RETRY_AFTER_S = 1


class RequestRefused(Exception):
    """A request answered with an error status: ``status``, a short ``reason`` and a sentence."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


def error_response(status: int, reason: str, message: str) -> JSONResponse:
    """The JSON body every error has: ``{"error": reason, "detail": message, "status": status}``."""
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (503, 429) else None
    return JSONResponse({"error": reason, "detail": message, "status": status}, status_code=status, headers=headers)


class ServerState:
    """What the web process knows: the model's description (asked of a model process at start), the
    requests and bytes in flight, the counters."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        self.description: dict[str, Any] | None = None
        self.pending = 0
        self.active = 0
        self.buffered = 0
        self.lock = threading.Lock()
        self.started = time.time()

    def reserve(self, size: int) -> bool:
        """Hold ``size`` more bytes of request bodies, if the budget allows."""
        with self.lock:
            if self.buffered + size > self.config.max_buffered_bytes:
                return False
            self.buffered += size
            return True

    def release(self, size: int) -> None:
        with self.lock:
            self.buffered -= size
