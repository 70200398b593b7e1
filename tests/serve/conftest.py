"""One `cnnlab serve` process for the whole package (starting one takes seconds): the offline model with its
real weights, on the backend `auto` chooses (ONNX Runtime on a CPU), with small limits to test against."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve")

#: Limits of the test server, small enough to pass with small requests.
MAX_IMAGE_BYTES = 2_000_000
MAX_REQUEST_BYTES = 4_000_000
MAX_IMAGES = 8
MAX_PENDING = 24
MAX_BATCH = 8
#: Pixel limits of the test server (images of a request add up to at most MAX_REQUEST_PIXELS).
MAX_PIXELS = 50_000_000
MAX_REQUEST_PIXELS = 40_000_000
#: Seconds a client of the test server has for its headers, and for its body.
HEADER_TIMEOUT_S = 2
BODY_TIMEOUT_S = 4


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    err: Path
    #: The limits it was started with (``max_image_bytes``...).
    limits: dict[str, int]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, *args: str, timeout: float = 180.0, limits: dict[str, int] | None = None) -> Server:
    """`cnnlab serve ...` in a child process, returned once /readyz answers 200."""
    port = free_port()
    log, err = folder / "access.jsonl", folder / "stderr.txt"
    with log.open("wb") as out, err.open("wb") as errors:
        process = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", *args, "--port", str(port)],
                                   stdout=out, stderr=errors, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   start_new_session=True)  # its own process group: stop_server can end it whole
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the server exited with {process.returncode}: {err.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                return Server(url, process, log, err, limits or {})
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    stop_server(process)
    raise AssertionError(f"the server was not ready within {timeout} s: {err.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen[bytes], timeout: float = 60.0) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return int(process.returncode)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("serve")
    running = start_server(folder, "efficientnet_lite0", "--max-image-bytes", str(MAX_IMAGE_BYTES),
                           "--max-request-bytes", str(MAX_REQUEST_BYTES), "--max-images", str(MAX_IMAGES),
                           "--max-pending", str(MAX_PENDING), "--max-batch-size", str(MAX_BATCH),
                           "--batch-timeout-ms", "100", "--max-pixels", str(MAX_PIXELS),
                           "--max-request-pixels", str(MAX_REQUEST_PIXELS), "--header-timeout", str(HEADER_TIMEOUT_S),
                           "--body-timeout", str(BODY_TIMEOUT_S),
                           limits={"max_image_bytes": MAX_IMAGE_BYTES, "max_request_bytes": MAX_REQUEST_BYTES,
                                   "max_images": MAX_IMAGES, "max_pending": MAX_PENDING, "max_pixels": MAX_PIXELS,
                                   "max_request_pixels": MAX_REQUEST_PIXELS, "header_timeout_s": HEADER_TIMEOUT_S,
                                   "body_timeout_s": BODY_TIMEOUT_S})
    try:
        yield running
    finally:
        stop_server(running.process)
