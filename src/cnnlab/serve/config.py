"""What ``cnnlab serve`` runs and how, parsed once: :class:`ServeConfig`.

Nothing here imports the web stack or torch, so the CLI builds its help and checks its options at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from cnnlab.errors import UsageError
from cnnlab.imagedata.limits import DEFAULT_MAX_PIXELS
from cnnlab.options import ModelSource, Quantization, RuntimeOptions

#: The addresses the server may listen on (LitServe binds no other): this machine only, or every interface.
HOSTS = ("127.0.0.1", "0.0.0.0", "::")
#: Largest image file taken by default, in bytes (a camera JPEG is a few megabytes).
DEFAULT_MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Largest request body taken by default, in bytes (several photos, or their base64 text).
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
#: Images one request may carry by default.
DEFAULT_MAX_IMAGES = 32
#: Pixels (width x height, from the headers) that the images of one request may add up to by default: decoding is
#: what a request costs the model process, so one request of many huge images cannot hold it for long.
DEFAULT_MAX_REQUEST_PIXELS = 100_000_000
#: Requests waiting for the model before new ones are turned away with 503 and Retry-After.
DEFAULT_MAX_PENDING = 256
#: Bytes of request bodies held in memory at once, all requests together, before new ones get 503.
DEFAULT_MAX_BUFFERED_BYTES = 512 * 1024 * 1024


def _count(value: Any, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise UsageError(f"{what} must be a whole number from {low:,} to {high:,}, got {value!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """A model served over HTTP with dynamic batching (see :mod:`cnnlab.serve`).

    ``model`` and ``runtime`` mean what they mean for :func:`cnnlab.predict`; with ``auto_backend`` the
    runtime is chosen as ``predict`` chooses it (:func:`cnnlab.runtime.loader.choose_backend`).
    """

    model: ModelSource
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    #: Run on the fastest runtime that reproduces the model (``--backend auto``) instead of ``runtime.backend``.
    auto_backend: bool = True
    #: Where the server listens: ``127.0.0.1`` (this machine only), ``0.0.0.0`` or ``::`` (every interface).
    host: str = "127.0.0.1"
    port: int = 8000
    #: Most images the model runs at once; requests that arrive together are batched up to it.
    max_batch_size: int = 16
    #: How long a batch waits for more requests before it runs, in milliseconds.
    batch_timeout_ms: float = 10.0
    #: Model processes (each holds a copy of the model).
    workers: int = 1
    topk: int = 5
    #: Top-class probability below which an image is ``unknown``; ``"auto"``: the checkpoint's calibrated one.
    unknown_threshold: float | str | None = None
    #: Largest image (one file, or one base64 item once decoded) in bytes: larger ones get 413.
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    #: Largest image in pixels (width x height), checked before its pixels are decoded (decompression bombs).
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: Most pixels the images of one request may add up to (read from their headers): more get 413.
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS
    #: Largest request body in bytes: larger ones get 413.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    #: Most images in one request.
    max_images: int = DEFAULT_MAX_IMAGES
    #: Most requests waiting for the model; more get 503 with Retry-After.
    max_pending: int = DEFAULT_MAX_PENDING
    #: Most bytes of request bodies held at once; more get 503 with Retry-After (keeps memory bounded).
    max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES
    #: Seconds a client may take to send a request's headers (later: 408 and the connection is closed).
    header_timeout_s: float = 10.0
    #: Seconds a client may take to send its request body (slow clients get 408).
    body_timeout_s: float = 30.0
    #: Seconds a request may wait for the model (from the moment its body is read) before it gets 504.
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelSource):
            object.__setattr__(self, "model", ModelSource(name=str(self.model)))
        if (not self.auto_backend and self.runtime.backend.quantization is Quantization.INT8
                and not self.model.name.lower().endswith(".onnx")):
            raise UsageError(f"the {self.runtime.backend.value} backend calibrates on the images it is given, and a "
                             "server has none at start: serve the fp32 backend, or an int8 .onnx file")
        host = str(self.host).strip()
        if host == "localhost":
            host = "127.0.0.1"
        if host not in HOSTS:
            raise UsageError(f"the host must be one of {', '.join(HOSTS)} (127.0.0.1: this machine only), not {self.host!r}")
        object.__setattr__(self, "host", host)
        _count(self.port, "the port", 1024, 65535)
        _count(self.max_batch_size, "the max batch size (max_batch_size)", 1, 4096)
        timeout = self.batch_timeout_ms
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 <= timeout <= 10_000:
            raise UsageError(f"the batch timeout (batch_timeout_ms) must be from 0 to 10000 ms, got {timeout!r}")
        _count(self.workers, "the model workers (workers)", 1, 64)
        _count(self.topk, "topk", 1, 1000)
        _count(self.max_image_bytes, "the image size limit (max_image_bytes)", 1, 2**40)
        _count(self.max_pixels, "the pixel limit (max_pixels)", 1, 2**40)
        _count(self.max_request_pixels, "the pixels per request (max_request_pixels)", 1, 2**44)
        _count(self.max_request_bytes, "the request size limit (max_request_bytes)", 1, 2**40)
        _count(self.max_images, "the images per request (max_images)", 1, 100_000)
        _count(self.max_pending, "the waiting requests (max_pending)", 1, 1_000_000)
        _count(self.max_buffered_bytes, "the buffered bytes (max_buffered_bytes)", 1, 2**44)
        for name in ("header_timeout_s", "body_timeout_s", "request_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
                raise UsageError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.request_timeout_s * 1000 <= self.batch_timeout_ms:
            raise UsageError(f"the request timeout (request_timeout_s, {self.request_timeout_s:g} s) must be longer than "
                             f"the batch timeout (batch_timeout_ms, {self.batch_timeout_ms:g} ms)")
        threshold = self.unknown_threshold
        if isinstance(threshold, str) and threshold.strip().lower() != "auto":
            try:
                threshold = float(threshold)
            except ValueError:
                raise UsageError(f"the unknown threshold (unknown_threshold) is a probability or auto, not "
                                 f"{self.unknown_threshold!r}") from None
        if isinstance(threshold, str):
            threshold = "auto"
        elif threshold is not None and (isinstance(threshold, bool) or not 0 <= float(threshold) <= 1):
            raise UsageError(f"the unknown threshold (unknown_threshold) must be a probability from 0 to 1, "
                             f"not {self.unknown_threshold!r}")
        object.__setattr__(self, "unknown_threshold", threshold)

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the server."""
        host = "127.0.0.1" if self.host == "0.0.0.0" else "[::1]" if self.host == "::" else self.host
        return f"http://{host}:{self.port}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data: what ``GET /v1/model`` reports of the server's settings."""
        return {"model": self.model.name, "auto_backend": self.auto_backend, "runtime": self.runtime.to_dict(),
                "host": self.host, "port": self.port, "max_batch_size": self.max_batch_size,
                "batch_timeout_ms": self.batch_timeout_ms, "workers": self.workers, "topk": self.topk,
                "unknown_threshold": self.unknown_threshold, "max_image_bytes": self.max_image_bytes,
                "max_pixels": self.max_pixels, "max_request_pixels": self.max_request_pixels,
                "max_request_bytes": self.max_request_bytes, "max_images": self.max_images,
                "max_pending": self.max_pending, "header_timeout_s": self.header_timeout_s,
                "body_timeout_s": self.body_timeout_s, "request_timeout_s": self.request_timeout_s}
