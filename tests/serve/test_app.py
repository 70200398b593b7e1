"""The web side of `cnnlab serve` through HTTP: the API, its errors for hostile input, metrics and access log.

Every test talks to the one server of the package (tests/serve/conftest.py); after each hostile request
the server must still answer a good one.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import struct
import threading
import zlib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from cnnlab.serve.metrics import parse_histogram
from tests.helpers.images import jpeg, package_photo


def _photo() -> bytes:
    return jpeg(package_photo("skimage", "data", "coffee.png"))


def _post_files(server: Any, *files: tuple[str, bytes], params: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url + "/v1/predict", files=[("files", (name, data, "application/octet-stream"))
                                                         for name, data in files], params=params, timeout=60)


def _still_answers(server: Any) -> None:
    response = _post_files(server, ("coffee.jpg", _photo()))
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["top"][0]["label"] == "espresso"


def _png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` (a decompression bomb's header)."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr:ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", crc)
    return bytes(data)


def _raw_request(server: Any, head: str, body: bytes = b"", read: bool = True) -> bytes:
    """Send bytes on a socket as they are (headers a client library would correct) and read the answer."""
    parts = urlsplit(server.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as sock:
        sock.sendall(head.encode("latin-1") + body)
        if not read:
            return b""
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer


def test_one_photo_gets_its_top_k_the_model_and_timing(server: Any) -> None:
    response = _post_files(server, ("coffee.jpg", _photo()))
    assert response.status_code == 200
    body = response.json()
    assert body["backend"] == "onnxruntime"
    assert body["model"].startswith("efficientnet_lite0")
    (prediction,) = body["predictions"]
    assert prediction["name"] == "coffee.jpg"
    assert [c["label"] for c in prediction["top"]][0] == "espresso"
    assert len(prediction["top"]) == 5
    probabilities = [c["probability"] for c in prediction["top"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6
    assert body["skipped"] == []
    assert body["timing"]["batch_images"] >= 1 and body["timing"]["total_ms"] > 0


def test_many_images_in_one_request_come_back_in_order(server: Any, real_photos: dict[str, Path]) -> None:
    files = [(name, path.read_bytes()) for name, path in sorted(real_photos.items())]
    body = _post_files(server, *files, params={"topk": "2"}).json()
    assert [p["name"] for p in body["predictions"]] == [name for name, _ in files]
    assert all(len(p["top"]) == 2 for p in body["predictions"])
    labels = {p["name"]: p["top"][0]["label"] for p in body["predictions"]}
    assert labels["coffee"] == "espresso" and "cat" in labels["cat"]


def test_json_with_base64_images_and_a_raw_image_body_are_answered_alike(server: Any) -> None:
    photo = _photo()
    as_json = httpx.post(server.url + "/v1/predict", json={"images": [base64.b64encode(photo).decode()]}, timeout=60)
    raw = httpx.post(server.url + "/v1/predict", content=photo, headers={"content-type": "image/jpeg"}, timeout=60)
    assert as_json.status_code == raw.status_code == 200
    assert as_json.json()["predictions"][0]["top"] == raw.json()["predictions"][0]["top"]


def test_a_bad_image_beside_good_ones_is_listed_as_skipped(server: Any) -> None:
    body = _post_files(server, ("coffee.jpg", _photo()), ("notes.txt", b"hello, not an image")).json()
    assert [p["name"] for p in body["predictions"]] == ["coffee.jpg"]
    assert body["skipped"] == [{"name": "notes.txt", "reason": "not-an-image", "detail": body["skipped"][0]["detail"]}]


@pytest.mark.parametrize(("data", "status", "reason"), [
    (b"hello, not an image", 415, "not-an-image"),
    (b"", 422, "empty"),
    ("truncated", 422, "truncated"),
    ("bomb", 413, "decompression-bomb"),
], ids=["text", "empty", "truncated-jpeg", "decompression-bomb"])
def test_unusable_images_get_a_clear_status_and_the_server_goes_on(server: Any, data: bytes | str, status: int,
                                                                    reason: str) -> None:
    if data == "truncated":
        data = _photo()[:3000]
    elif data == "bomb":
        data = _png_claiming(30_000, 30_000)
    assert isinstance(data, bytes)
    response = _post_files(server, ("upload", data))
    assert response.status_code == status, response.text
    assert response.json()["error"] == reason
    assert response.json()["status"] == status
    if reason == "decompression-bomb":  # the server's limit and wording, not Pillow's
        detail = response.json()["detail"]
        assert "30000x30000" in detail and f"{server.limits['max_pixels']:,}" in detail, detail
        assert "178956970" not in detail and "178,956,970" not in detail
    _still_answers(server)


def test_a_20000x1_strip_is_classified_as_predict_would(server: Any) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (20000, 1), (120, 30, 200)).save(buffer, "PNG")
    response = _post_files(server, ("strip.png", buffer.getvalue()))
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]["top"]) == 5
    _still_answers(server)


def test_wrong_content_types_get_415(server: Any) -> None:
    response = httpx.post(server.url + "/v1/predict", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 415
    assert response.json()["error"] == "unsupported-media-type"
    assert httpx.post(server.url + "/v1/predict", content=b"{").status_code == 415  # no content type at all


@pytest.mark.parametrize(("body", "reason"), [
    (b"{not json", "bad-json"), (b'{"images": ["!!!"]}', "bad-base64"), (b'{"pictures": []}', "bad-request"),
    (b'{"images": []}', "no-images"),
])
def test_malformed_json_gets_400(server: Any, body: bytes, reason: str) -> None:
    response = httpx.post(server.url + "/v1/predict", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == reason


def test_a_body_over_the_limit_gets_413_before_it_is_read(server: Any) -> None:
    head = (f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {10 * server.limits['max_request_bytes']}\r\n\r\n")
    answer = _raw_request(server, head, b"\xff\xd8\xff" + b"0" * 1000)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    _still_answers(server)


def test_a_chunked_body_over_the_limit_gets_413(server: Any) -> None:
    def chunks():  # no Content-Length: the limit is found while reading
        for _ in range(2 * server.limits["max_request_bytes"] // 65536 + 2):
            yield b"0" * 65536

    try:
        response = httpx.post(server.url + "/v1/predict", content=chunks(), headers={"content-type": "image/jpeg"},
                              timeout=60)
        assert response.status_code == 413
        assert response.json()["error"] == "request-too-large"
    except httpx.WriteError:  # the server answered and closed while the client still sent: refused all the same
        pass
    _still_answers(server)


def test_an_image_over_the_image_limit_and_too_many_images_get_413(server: Any) -> None:
    big = _post_files(server, ("big.jpg", b"\xff\xd8\xff" + b"0" * (server.limits["max_image_bytes"] + 1)))
    assert big.status_code == 413 and big.json()["error"] == "too-large"
    many = _post_files(server, *[(f"{i}.jpg", _photo()) for i in range(server.limits["max_images"] + 1)])
    assert many.status_code == 413, many.text
    assert many.json() == {"error": "too-many-images", "status": 413, "detail": many.json()["detail"]}
    _still_answers(server)


@pytest.mark.parametrize(("content_type", "body"), [
    ("multipart/form-data; boundary=xyz", b"garbage, no parts at all\r\n--xyz\r\nContent-Disposition: bogus\r\n"),
    ("multipart/form-data", b"--xyz\r\nContent-Disposition: form-data; name=files; filename=a.jpg\r\n\r\nab\r\n--xyz--\r\n"),
], ids=["garbage", "no-boundary"])
def test_bad_multipart_bodies_get_the_documented_json_error_and_are_counted(server: Any, content_type: str,
                                                                           body: bytes) -> None:
    response = httpx.post(server.url + "/v1/predict", content=body, headers={"content-type": content_type}, timeout=60)
    assert response.status_code == 400, response.text
    answer = response.json()
    assert set(answer) == {"error", "detail", "status"} and answer["status"] == 400
    assert answer["error"] in ("bad-multipart", "no-images")
    assert f'cnnlab_serve_errors_total{{reason="{answer["error"]}"}}' in httpx.get(server.url + "/metrics").text
    _still_answers(server)


def test_deeply_nested_json_gets_400_bad_json_and_is_counted(server: Any) -> None:
    def counted() -> float:
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith('cnnlab_serve_errors_total{reason="bad-json"}'):
                return float(line.split()[-1])
        return 0.0

    before = counted()
    response = httpx.post(server.url + "/v1/predict", content=b"[" * 100_000,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "bad-json" and response.json()["status"] == 400
    assert counted() == before + 1
    _still_answers(server)


def test_a_request_whose_images_add_up_to_too_many_pixels_gets_413_before_decoding(server: Any) -> None:
    each = (3000, 2000)  # under the pixel limit one by one, over the request's budget together
    count = server.limits["max_request_pixels"] // (each[0] * each[1]) + 1
    assert count <= server.limits["max_images"]
    response = _post_files(server, *[(f"{i}.png", _png_claiming(*each)) for i in range(count)])
    assert response.status_code == 413, response.text
    assert response.json()["error"] == "too-many-pixels"
    assert f"{server.limits['max_request_pixels']:,}" in response.json()["detail"]
    _still_answers(server)


def test_an_image_over_the_pixel_limit_beside_a_good_one_is_skipped(server: Any) -> None:
    body = _post_files(server, ("coffee.jpg", _photo()), ("bomb.png", _png_claiming(30_000, 30_000))).json()
    assert [p["name"] for p in body["predictions"]] == ["coffee.jpg"]
    assert body["predictions"][0]["top"][0]["label"] == "espresso"
    assert [(r["name"], r["reason"]) for r in body["skipped"]] == [("bomb.png", "decompression-bomb")]


def _read_answer(sock: socket.socket) -> bytes:
    """A whole JSON answer from ``sock`` (or what came before the server closed it)."""
    answer = b""
    while not (b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


def test_slow_uploads_take_no_place_meant_for_the_model_and_get_408(server: Any) -> None:
    """More slow uploads than there are waiting places (a body announced, one byte sent): good requests are
    still answered, and each slow upload gets 408 once its body deadline passes."""
    parts = urlsplit(server.url)
    held = []
    try:
        for _ in range(server.limits["max_pending"] + 8):
            sock = socket.create_connection((parts.hostname, parts.port), timeout=60)
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                         b"Content-Length: 100000\r\n\r\na")
            held.append(sock)
        _still_answers(server)
        assert httpx.get(server.url + "/healthz").status_code == 200
        answers = [_read_answer(sock) for sock in held]
    finally:
        for sock in held:
            sock.close()
    assert all(answer.startswith(b"HTTP/1.1 408") for answer in answers), {a[:40] for a in answers}
    assert b'"error":"body-timeout"' in answers[0]
    _still_answers(server)


def test_concurrent_requests_are_batched_and_metrics_show_it(server: Any) -> None:
    photo = _photo()
    start = threading.Barrier(12)
    statuses: list[int] = []

    def client() -> None:
        start.wait()
        statuses.append(_post_files(server, ("coffee.jpg", photo)).status_code)

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 12
    text = httpx.get(server.url + "/metrics").text
    requests_per_batch = parse_histogram(text, "cnnlab_serve_batch_requests")
    assert requests_per_batch["+Inf"] > requests_per_batch["1"], "no batch held more than one request"
    assert parse_histogram(text, "cnnlab_serve_batch_images")["+Inf"] >= 1
    assert 'cnnlab_serve_requests_total{path="/v1/predict",method="POST",status="200"}' in text
    assert "cnnlab_serve_request_duration_seconds_bucket" in text
    assert "cnnlab_serve_waiting 0" in text


def test_model_health_ready_docs(server: Any) -> None:
    model = httpx.get(server.url + "/v1/model").json()
    assert model["num_classes"] == len(model["classes"]) == 1000
    assert model["preprocessing"]["crop_size"] == 224
    assert model["runtime"]["backend"] == "onnxruntime"
    assert model["runtime"]["backend_choice"]["auto"] is True
    assert model["version"]["cnnlab"]
    assert httpx.get(server.url + "/healthz").json()["status"] == "ok"
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"
    assert httpx.get(server.url + "/docs").status_code == 200
    assert "/v1/predict" in httpx.get(server.url + "/openapi.json").json()["paths"]
    assert httpx.get(server.url + "/nowhere").status_code == 404


def test_errors_are_counted_and_every_request_is_logged_as_a_json_line(server: Any) -> None:
    _post_files(server, ("notes.txt", b"not an image"))
    assert 'cnnlab_serve_errors_total{reason="not-an-image"}' in httpx.get(server.url + "/metrics").text
    records = [json.loads(line) for line in server.log.read_text().splitlines()]
    refused = [r for r in records if r["path"] == "/v1/predict" and r["status"] == 415]
    assert refused and refused[-1]["reason"] == "not-an-image"
    assert {"time", "client", "method", "duration_ms", "bytes_sent"} <= set(refused[-1])


def _request_with_body(chunks: list[bytes], *, stall: bool = False, length: int | None = None):
    """A starlette Request whose body arrives as ``chunks`` (then never ends, with ``stall``)."""
    import asyncio

    from starlette.requests import Request

    messages = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]

    async def receive() -> dict[str, object]:
        if messages:
            return messages.pop(0)
        if stall:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": b"", "more_body": False}

    headers = [(b"content-length", str(length).encode())] if length is not None else []
    return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers}, receive)


def test_a_slow_body_gets_408_and_gives_its_bytes_back() -> None:
    import asyncio

    from cnnlab.options import ModelSource
    from cnnlab.serve.app import RequestRefused, ServerState, read_body
    from cnnlab.serve.config import ServeConfig

    state = ServerState(ServeConfig(model=ModelSource(name="efficientnet_lite0"), body_timeout_s=0.2))
    with pytest.raises(RequestRefused) as refused:
        asyncio.run(read_body(_request_with_body([b"x" * 100], stall=True), state))
    assert refused.value.status == 408
    assert state.buffered == 0


def test_request_bytes_over_the_budget_get_503() -> None:
    import asyncio

    from cnnlab.options import ModelSource
    from cnnlab.serve.app import RequestRefused, ServerState, read_body
    from cnnlab.serve.config import ServeConfig

    state = ServerState(ServeConfig(model=ModelSource(name="efficientnet_lite0"), max_buffered_bytes=1000))
    assert state.reserve(900)  # another request holds most of the budget
    with pytest.raises(RequestRefused) as refused:
        asyncio.run(read_body(_request_with_body([b"x" * 60, b"x" * 60]), state))
    assert (refused.value.status, refused.value.reason) == (503, "overloaded")
    assert state.buffered == 900
    body = asyncio.run(read_body(_request_with_body([b"x" * 50, b"y" * 10]), state))
    assert body == b"x" * 50 + b"y" * 10


def _route_request(body: bytes, *, stall: bool = False):
    """A starlette Request for POST /v1/predict with a raw JPEG-typed body (never ending, with ``stall``)."""
    import asyncio

    from starlette.requests import Request

    sent = [False]

    async def receive() -> dict[str, object]:
        if not sent[0]:
            sent[0] = True
            return {"type": "http.request", "body": body, "more_body": stall}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    headers = [(b"content-type", b"image/jpeg"), (b"content-length", str(len(body) + 1000 * stall).encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/predict", "headers": headers,
                    "query_string": b""}, receive)


def test_a_request_takes_a_waiting_place_only_once_its_body_is_read() -> None:
    """Requests still uploading hold no place; a request ready for the model finds one, and a full server
    answers 503 with Retry-After."""
    import asyncio

    from cnnlab.options import ModelSource
    from cnnlab.serve.app import ServerState, make_predict_route
    from cnnlab.serve.config import ServeConfig

    state = ServerState(ServeConfig(model=ModelSource(name="efficientnet_lite0"), max_pending=2, body_timeout_s=0.5))
    seen: list[int] = []

    async def submit(payload: dict[str, Any]) -> dict[str, Any]:
        seen.append(state.pending)
        return {"model": "m", "backend": "torch", "batch": {"id": "1", "images": 1, "requests": 1, "model_ms": 1.0},
                "results": [{"top": [{"index": 0, "label": "a", "probability": 1.0}], "unknown": False}]}

    route = make_predict_route(submit, state)

    async def scenario() -> list[Any]:
        slow = [asyncio.ensure_future(route(_route_request(b"\xff\xd8", stall=True))) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert state.pending == 0  # five uploads under way, no place taken
        good = await route(_route_request(_photo()))
        state.pending = 2  # two requests wait for the model
        full = await route(_route_request(_photo()))
        state.pending = 0
        return [good, full, *await asyncio.gather(*slow)]

    good, full, *slow = asyncio.run(scenario())
    assert good.status_code == 200 and seen == [1]
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert json.loads(full.body)["error"] == "overloaded"
    assert [r.status_code for r in slow] == [408] * 5
    assert state.pending == 0 and state.buffered == 0


def test_a_request_the_model_does_not_answer_in_time_gets_504_and_is_forgotten() -> None:
    """The web process keeps the request timeout itself: a request queued behind a slow batch is not held longer."""
    import asyncio
    import queue
    from types import SimpleNamespace

    from cnnlab.serve.api import API_PATH
    from cnnlab.serve.app import RequestRefused, model_submitter

    requests: queue.Queue[Any] = queue.Queue()
    server = SimpleNamespace(response_buffer={}, app=SimpleNamespace(response_queue_id=0), active_requests=0,
                             _get_request_queue=lambda path: requests,
                             _callback_runner=SimpleNamespace(trigger_event=lambda *args, **kwargs: None))
    submit = model_submitter(server, SimpleNamespace(api_path=API_PATH), 0.3)  # type: ignore[arg-type]
    with pytest.raises(RequestRefused) as refused:
        asyncio.run(submit({"images": [b"x"]}))
    assert (refused.value.status, refused.value.reason) == (504, "timeout")
    assert requests.qsize() == 1  # it was submitted; the model never answered
    assert server.response_buffer == {}
