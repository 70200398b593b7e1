"""`cnnlab serve`: a model as an HTTP service (dynamic batching, web page, health and metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cnnlab.cli.app import app
from cnnlab.cli.common import handle_errors
from cnnlab.cli.params import Device, Threads, Weights, WeightsDir
from cnnlab.cli.predict import BackendName
from cnnlab.imagedata.limits import DEFAULT_MAX_PIXELS
from cnnlab.options import ModelSource, RuntimeChoice, RuntimeOptions
from cnnlab.serve.config import (
    DEFAULT_MAX_IMAGE_BYTES,
    DEFAULT_MAX_IMAGES,
    DEFAULT_MAX_PENDING,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_REQUEST_PIXELS,
    ServeConfig,
)


@app.command("serve")
@handle_errors
def serve_command(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Registry name (offline: efficientnet_lite0), a checkpoint of `cnnlab train` or an .onnx file of `cnnlab export`.")],
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS", help="Where to listen: 127.0.0.1 (this machine only), 0.0.0.0 or :: (every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1024, max=65535, metavar="N", help="TCP port.")] = 8000,
    max_batch_size: Annotated[int, typer.Option("--max-batch-size", min=1, max=4096, metavar="N", help="Most images the model runs at once; requests that arrive together are batched up to it.")] = 16,
    batch_timeout_ms: Annotated[float, typer.Option("--batch-timeout-ms", min=0.0, max=10000.0, metavar="MS", help="How long a batch waits for more requests before it runs.")] = 10.0,
    workers: Annotated[int, typer.Option("--workers", min=1, max=64, metavar="N", help="Model processes, each with its own copy of the model.")] = 1,
    topk: Annotated[int, typer.Option("--topk", "-k", min=1, max=1000, metavar="K", help="Classes returned per image (a request may ask for fewer with ?topk=).")] = 5,
    unknown_threshold: Annotated[Optional[str], typer.Option("--unknown-threshold", metavar="P|auto", help="Mark an image unknown (none of these) when its top class is below this probability; auto: the threshold a cnnlab train checkpoint calibrated on its validation images.")] = None,
    max_image_bytes: Annotated[int, typer.Option("--max-image-bytes", min=1, metavar="BYTES", help="Largest image file accepted (larger: 413).")] = DEFAULT_MAX_IMAGE_BYTES,
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=1, metavar="N", help="Largest image in pixels, checked before decoding (decompression bombs: 413).")] = DEFAULT_MAX_PIXELS,
    max_request_pixels: Annotated[int, typer.Option("--max-request-pixels", min=1, metavar="N", help="Most pixels the images of one request may add up to, read from their headers before decoding (more: 413).")] = DEFAULT_MAX_REQUEST_PIXELS,
    max_request_bytes: Annotated[int, typer.Option("--max-request-bytes", min=1, metavar="BYTES", help="Largest request body accepted (larger: 413).")] = DEFAULT_MAX_REQUEST_BYTES,
    max_images: Annotated[int, typer.Option("--max-images", min=1, metavar="N", help="Most images in one request.")] = DEFAULT_MAX_IMAGES,
    max_pending: Annotated[int, typer.Option("--max-pending", min=1, metavar="N", help="Most requests waiting for the model; more get 503 with Retry-After.")] = DEFAULT_MAX_PENDING,
    header_timeout: Annotated[float, typer.Option("--header-timeout", min=0.1, max=3600.0, metavar="SECONDS", help="Time a client has to send a request's headers (later: 408, connection closed).")] = 10.0,
    body_timeout: Annotated[float, typer.Option("--body-timeout", min=0.1, max=3600.0, metavar="SECONDS", help="Time a client has to send a request's body (later: 408).")] = 30.0,
    request_timeout: Annotated[float, typer.Option("--request-timeout", min=0.1, max=3600.0, metavar="SECONDS", help="Time a request may wait for the model once its body is read (later: 504).")] = 30.0,
    backend: Annotated[BackendName, typer.Option("--backend", case_sensitive=False, help="What runs the model: auto (ONNX Runtime on the CPU when installed and its export matches PyTorch, else PyTorch), torch, or its ONNX export in onnxruntime or openvino.")] = BackendName.AUTO,
    device: Device = "auto",
    threads: Threads = None,
    weights: Weights = None,
    weights_dir: WeightsDir = None,
) -> None:
    """Serve a model over HTTP: POST /v1/predict, a web page at /, /healthz, /readyz, /metrics, /docs.

    The access log is written to stdout as JSON lines. Stop with Ctrl+C or SIGTERM (requests in flight are answered).
    """
    from cnnlab.serve import run

    source = ModelSource(name=model, weights=Path(weights) if weights else None,
                         weights_dir=Path(weights_dir) if weights_dir else None)
    auto = backend is BackendName.AUTO
    runtime = RuntimeOptions(device=device, backend=RuntimeChoice.TORCH if auto else RuntimeChoice(backend.value),
                             threads=threads)
    config = ServeConfig(model=source, runtime=runtime, auto_backend=auto, host=host, port=port,
                         max_batch_size=max_batch_size, batch_timeout_ms=batch_timeout_ms, workers=workers, topk=topk,
                         unknown_threshold=unknown_threshold, max_image_bytes=max_image_bytes, max_pixels=max_pixels,
                         max_request_pixels=max_request_pixels, max_request_bytes=max_request_bytes,
                         max_images=max_images, max_pending=max_pending, header_timeout_s=header_timeout,
                         body_timeout_s=body_timeout, request_timeout_s=request_timeout)
    run(config)
