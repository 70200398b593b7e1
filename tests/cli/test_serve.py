"""`cnnlab serve`: its options are checked before anything starts, a model that cannot load is said as predict
says it, and SIGTERM lets the requests in flight finish before the command exits 0."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from tests.helpers.images import jpeg, package_photo

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    port = _free_port()
    err = tmp_path / "stderr.txt"
    with err.open("wb") as errors:
        process = subprocess.Popen([sys.executable, "-m", "cnnlab", "serve", *args, "--port", str(port)],
                                   stdout=subprocess.DEVNULL, stderr=errors, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                   start_new_session=True)  # its own process group: a failed test kills it whole
    return process, f"http://127.0.0.1:{port}", err


def test_help_names_the_endpoints_and_options() -> None:
    result = runner.invoke(app, ["serve", "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    for words in ("/v1/predict", "--max-batch-size", "--batch-timeout-ms", "--max-image-bytes", "--max-pixels",
                  "--unknown-threshold", "--backend", "--workers", "--host", "--port"):
        assert words in result.output


@pytest.mark.parametrize(("args", "words"), [
    (["--host", "example.org"], "host"),
    (["--port", "80"], "port"),
    (["--unknown-threshold", "sometimes"], "unknown-threshold"),
    (["--backend", "tensorflow"], "backend"),
])
def test_bad_options_exit_2_before_anything_starts(args: list[str], words: str) -> None:
    result = runner.invoke(app, ["serve", "efficientnet_lite0", *args])
    assert result.exit_code == 2
    assert words in result.output


def test_a_model_that_cannot_load_is_an_error_with_its_exit_code(tmp_path: Path) -> None:
    pytest.importorskip("litserve")
    process, _, err = _serve(tmp_path, "no_such_model_anywhere")
    assert process.wait(timeout=180) == 2
    text = err.read_text()
    assert "no_such_model_anywhere" in text
    assert "Traceback" not in text


def test_sigterm_answers_the_requests_in_flight_then_exits_0(tmp_path: Path) -> None:
    """Requests whose bodies are half sent when SIGTERM arrives are still answered 200, then the command exits 0."""
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("litserve")
    process, url, err = _serve(tmp_path, "efficientnet_lite0")
    sockets: list[socket.socket] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert process.poll() is None, err.read_text()
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        photo = jpeg(package_photo("skimage", "data", "coffee.png"))
        request = httpx.Request("POST", url + "/v1/predict", files=[("files", ("c.jpg", photo, "image/jpeg"))])
        body = request.read()
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "host")
        port = int(url.rsplit(":", 1)[1])
        for _ in range(3):  # each request holds half its body back: in flight, and it cannot finish before SIGTERM
            sock = socket.create_connection(("127.0.0.1", port), timeout=120)
            sock.sendall(f"POST /v1/predict HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + body[: len(body) // 2])
            sockets.append(sock)
        while "cnnlab_serve_in_flight 3" not in httpx.get(url + "/metrics", timeout=10).text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server has begun to stop (a new connection now would be refused)
        answers = []
        for sock in sockets:
            sock.sendall(body[len(body) // 2:])
            answers.append(sock.recv(65536).split(b"\r\n", 1)[0])
        assert answers == [b"HTTP/1.1 200 OK"] * 3
        assert process.wait(timeout=120) == 0, err.read_text()
    finally:
        for sock in sockets:
            sock.close()
        with contextlib.suppress(ProcessLookupError):  # the model and web processes too, not only the main one
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_docs_show_the_dockerfile_as_it_is() -> None:
    root = Path(__file__).resolve().parents[2]
    dockerfile = (root / "docker" / "serve.Dockerfile").read_text(encoding="utf-8")
    assert f"```dockerfile\n{dockerfile}```" in (root / "docs" / "commands" / "serve.md").read_text(encoding="utf-8")
