"""The web side of ``cnnlab serve``: LitServe's server with cnnlab's own routes, limits, metrics and log.

LitServe brings the model processes, the queue between them and the web process, and dynamic batching.
Its own request route is not used: LitServe parses a body without limits and hands decode failures to a
whole batch, so ``POST /v1/predict`` is a route of ours on LitServe's FastAPI app that reads the body
within the limits, answers malformed and oversized requests itself (400, 408, 413, 415, 503 with
Retry-After), and submits the images' bytes through LitServe's request handler. LitServe's page at ``/``
is replaced by cnnlab's (``page.html``), and its ``/health`` and ``/info`` by ``/healthz``, ``/readyz``
and ``/v1/model``. One web process (all counters in one place); ``workers`` model processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import litserve as ls
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.serve.access_log import AccessLog
from cnnlab.serve.api import API_PATH, DESCRIBE, EXPIRES, ClassifierAPI, describe_stderr, report_setup_error
from cnnlab.serve.config import ServeConfig
from cnnlab.serve.connections import protocol_class
from cnnlab.serve.requests import RAW_TYPES, media_type, parse_images, read_body, requested_topk, weigh_images
from cnnlab.serve.state import RequestRefused, ServerState, error_response

#: HTTP status of an image that could not be used, by its reason (:data:`cnnlab.imagedata.decode.REASONS`).
STATUS_OF_REASON = {"not-an-image": 415, "too-large": 413, "decompression-bomb": 413}

#: Submits a request's payload to a model process and waits for its answer (504 past the request timeout).
Submit = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def _status_of(results: list[dict[str, Any]]) -> tuple[int, str, str]:
    """Status, reason and message of a request none of whose images could be used."""
    first = results[0]
    reason = str(first.get("error", "unreadable"))
    return STATUS_OF_REASON.get(reason, 422), reason, f"{reason}: {first.get('detail') or 'the image cannot be used'}"


def model_submitter(server: ls.LitServer, api: ClassifierAPI, timeout_s: float) -> Submit:
    """A payload through LitServe's queue to a model process, its answer awaited at most ``timeout_s``.

    LitServe's own handler waits for ever, and its model loop only checks a request's age when it takes
    the request from the queue: a request queued behind a slow batch would learn of its timeout late.
    Here the web process keeps the deadline itself (504), and forgets the answer if it comes after.
    """
    from litserve.server import RegularRequestHandler
    from litserve.utils import LitAPIStatus, ResponseBufferItem

    handler = RegularRequestHandler(api, server)

    async def submit(payload: dict[str, Any]) -> dict[str, Any]:
        uid, _ = await handler._submit_request({**payload, EXPIRES: time.time() + timeout_s})
        event = asyncio.Event()
        server.response_buffer[uid] = ResponseBufferItem(event)
        try:
            await asyncio.wait_for(event.wait(), timeout=timeout_s)
        except TimeoutError:
            raise RequestRefused(504, "timeout", f"the model did not answer within {timeout_s:g} s") from None
        finally:
            item = server.response_buffer.pop(uid, None)
        assert item is not None
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            try:
                handler._handle_error_response(response)
            except HTTPException as exc:
                code = exc.status_code
                reason = "timeout" if code == 504 else "model-error" if code >= 500 else "refused"
                raise RequestRefused(code, reason, str(exc.detail)) from None
        answer: dict[str, Any] = response
        return answer

    return submit


def make_predict_route(submit: Submit, state: ServerState) -> Callable[[Request], Awaitable[Response]]:
    """``POST /v1/predict``: checks, then the images' bytes through ``submit`` to a model process.

    A request takes one of the ``max_pending`` places only once its body is read and checked: clients
    still uploading (slow ones get 408 from :func:`read_body`) never crowd out requests ready for the model.
    """
    config = state.config
    accepted = ("multipart/form-data", "application/json", *RAW_TYPES)

    def overloaded() -> RequestRefused:
        return RequestRefused(503, "overloaded", f"{state.pending} requests are waiting for the model; try again shortly")

    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        extra = request.scope.setdefault("cnnlab", {})
        placed = False
        state.active += 1
        state.metrics.in_flight = state.active
        try:
            if state.pending >= config.max_pending:  # full already: say so before reading the body
                raise overloaded()
            content_type = media_type(request)
            if content_type not in accepted and not content_type.startswith("image/"):
                raise RequestRefused(415, "unsupported-media-type",
                                     f"content type {content_type or '(none)'!r}: send multipart/form-data files, "
                                     "JSON with base64 images, or one image as the body")
            body = await read_body(request, state)
            try:
                images = await parse_images(request, body, content_type, state)
            finally:
                del body
            if not images:
                raise RequestRefused(400, "no-images", "the request holds no image")
            if len(images) > config.max_images:
                raise RequestRefused(413, "too-many-images", f"{len(images)} images; the limit is {config.max_images}")
            for name, data in images:
                if len(data) > config.max_image_bytes:
                    raise RequestRefused(413, "too-large", f"{name}: {len(data):,} bytes exceeds the limit of "
                                                           f"{config.max_image_bytes:,}")
            extra["images"] = len(images)
            topk = requested_topk(request, config.topk)
            refused = weigh_images(images, config)
            if state.pending >= config.max_pending:
                raise overloaded()
            state.pending += 1
            placed = True
            state.metrics.waiting = state.pending
            names = [name for name, _ in images]
            sent = [data for position, (_, data) in enumerate(images) if position not in refused]
            del images
            submitted = time.perf_counter()
            answer = await submit({"images": sent}) if sent else None
            del sent
            return _answer(answer, names, refused, topk, state, started, submitted, extra)
        except RequestRefused as exc:
            state.metrics.error(exc.reason)
            extra["reason"] = exc.reason
            return error_response(exc.status, exc.reason, exc.message)
        except ClientDisconnect:  # the client went away mid-body: nobody to answer
            state.metrics.error("client-disconnected")
            extra["reason"] = "client-disconnected"
            return error_response(400, "client-disconnected", "the client closed the connection before its body was read")
        finally:
            state.release(extra.pop("held", 0))
            state.active -= 1
            state.metrics.in_flight = state.active
            if placed:
                state.pending -= 1
                state.metrics.waiting = state.pending

    return predict


def _answer(answer: dict[str, Any] | None, names: list[str], refused: dict[int, tuple[str, str]], topk: int,
            state: ServerState, started: float, submitted: float, extra: dict[str, Any]) -> Response:
    """The JSON answer: one prediction per usable image, one skipped record per other image, timing.

    ``answer`` is the model process's, for the images not ``refused`` by the web process (None if none was sent).
    """
    model_results = iter(answer["results"] if answer else [])
    results = [{"error": refused[i][0], "detail": refused[i][1]} if i in refused else next(model_results)
               for i in range(len(names))]
    batch = answer["batch"] if answer else None
    if batch is not None:
        state.metrics.batch(batch["id"], batch["images"], batch["requests"], batch["model_ms"])
    predictions, skipped = [], []
    for name, result in zip(names, results):
        if "error" in result:
            skipped.append({"name": name, "reason": result["error"], "detail": result.get("detail", "")})
        else:
            predictions.append({"name": name, "top": result["top"][:topk], "unknown": result["unknown"]})
    for record in skipped:
        state.metrics.error(record["reason"])
    state.metrics.predicted(len(predictions))
    if not predictions or answer is None or batch is None:
        status, reason, message = _status_of(results)
        extra["reason"] = reason
        return error_response(status, reason, message)
    now = time.perf_counter()
    body = {"model": answer["model"], "backend": answer["backend"], "predictions": predictions, "skipped": skipped,
            "timing": {"total_ms": round((now - started) * 1000, 3), "read_ms": round((submitted - started) * 1000, 3),
                       "model_ms": batch["model_ms"], "batch_images": batch["images"],
                       "batch_requests": batch["requests"]}}
    return JSONResponse(body)


def page_html() -> str:
    """The self-contained web page served at ``/``."""
    return resources.files("cnnlab.serve").joinpath("page.html").read_text(encoding="utf-8")


def _workers_ready(server: ls.LitServer) -> bool:
    status = getattr(server, "workers_setup_status", None)
    if not status:
        return False
    try:
        values = list(status.values())
    except Exception:  # noqa: BLE001 - the manager is gone: shutting down
        return False
    return bool(values) and all(str(getattr(v, "value", v)) == "ready" for v in values)


def add_routes(server: ls.LitServer, api: ClassifierAPI, state: ServerState) -> None:
    """Replace LitServe's ``/``, ``/health``, ``/info`` and request route with cnnlab's routes."""
    import cnnlab

    app: FastAPI = server.app
    drop = {"/", "/health", "/info", API_PATH}
    app.router.routes[:] = [r for r in app.router.routes if getattr(r, "path", None) not in drop]
    app.title = "cnnlab serve"
    app.version = cnnlab.__version__
    app.description = "Image classification with dynamic batching: POST images to /v1/predict."
    submit = model_submitter(server, api, state.config.request_timeout_s)
    app.add_api_route(API_PATH, make_predict_route(submit, state), methods=["POST"],
                      summary="Classify one or many images", openapi_extra=_PREDICT_OPENAPI,
                      response_class=JSONResponse)

    async def model() -> Response:
        if state.description is None:
            return error_response(503, "starting", "the model is still loading")
        return JSONResponse({**state.description, "server": state.config.to_dict(),
                             "version": {"cnnlab": cnnlab.__version__, "litserve": ls.__version__}})

    async def healthz() -> Response:
        return JSONResponse({"status": "ok", "uptime_s": round(time.time() - state.started, 3)})

    async def readyz() -> Response:
        if state.description is None or not _workers_ready(server):
            return error_response(503, "starting", "the model processes are not ready yet")
        return JSONResponse({"status": "ready", "model": state.description["model"]})

    async def metrics() -> Response:
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    page = page_html()

    async def index() -> Response:
        return HTMLResponse(page, headers={"Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
                                           "style-src 'unsafe-inline'; script-src 'unsafe-inline'"})

    app.add_api_route("/v1/model", model, methods=["GET"], summary="The model: classes, preprocessing, backend")
    app.add_api_route("/healthz", healthz, methods=["GET"], summary="Liveness: the web process answers")
    app.add_api_route("/readyz", readyz, methods=["GET"], summary="Readiness: the model answers requests")
    app.add_api_route("/metrics", metrics, methods=["GET"], summary="Prometheus metrics")
    app.add_api_route("/", index, methods=["GET"], include_in_schema=False)
    _describe_at_start(server, api, state)


_PREDICT_OPENAPI: dict[str, Any] = {
    "requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "files": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"type": "object", "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "byte"}}}}},
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
    }},
    "parameters": [{"name": "topk", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1}}],
}


def _describe_at_start(server: ls.LitServer, api: ClassifierAPI, state: ServerState) -> None:
    """At the web process's start, ask a model process for the model's description (then ``/readyz`` is 200)."""
    from litserve.server import RegularRequestHandler

    original = server.app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with original(app):
            task = asyncio.get_running_loop().create_task(ask())
            try:
                yield
            finally:
                task.cancel()

    async def ask() -> None:
        handler = RegularRequestHandler(api, server)
        while state.description is None:
            try:
                answer = await handler.handle_request({DESCRIBE: True}, dict)
                state.description = answer[DESCRIBE]
            except Exception:  # noqa: BLE001 - a model process still starting: ask again
                await asyncio.sleep(0.2)
        info = state.description
        backend = info["runtime"].get("backend", "?")
        describe_stderr(f"cnnlab serve: ready at {state.config.url}/ ({info['model']}, {backend}, "
                        f"{info['num_classes']} classes)")

    server.app.router.lifespan_context = lifespan


class CnnlabLitServer(ls.LitServer):
    """LitServe's server, with a shutdown that lets the web process finish the requests in flight first."""

    def _perform_graceful_shutdown(self, manager: Any, uvicorn_workers: Any, shutdown_reason: str = "normal") -> None:
        for worker in list(uvicorn_workers.values()):
            if isinstance(worker, BaseProcess) and worker.is_alive():
                worker.terminate()  # uvicorn stops accepting, answers what it holds, then exits
                worker.join(timeout=self.uvicorn_graceful_timeout)
                if worker.is_alive():
                    worker.kill()
        super()._perform_graceful_shutdown(manager, {}, shutdown_reason)


def _accelerator(device: str) -> tuple[str, Any]:
    """LitServe's accelerator and devices for a cnnlab device string."""
    if device == "cpu":
        return "cpu", "auto"
    if device.startswith("cuda"):
        index = device.partition(":")[2]
        return "cuda", [int(index)] if index else 1
    return "auto", "auto"


def build_server(config: ServeConfig, error_file: Path | None = None, *, log: Any = None) -> tuple[CnnlabLitServer, ServerState]:
    """The server for ``config``, not started (:func:`run` starts it)."""
    state = ServerState(config)
    api = ClassifierAPI(config, str(error_file) if error_file else None)
    accelerator, devices = _accelerator(config.runtime.device)
    server = CnnlabLitServer(api, accelerator=accelerator, devices=devices, workers_per_device=config.workers,
                             timeout=config.request_timeout_s, middlewares=[(AccessLog, {"state": state, "stream": log})])
    server.uvicorn_graceful_timeout = 20
    add_routes(server, api, state)
    return server, state


def run(config: ServeConfig) -> None:
    """Serve ``config.model`` until interrupted (Ctrl+C) or terminated (SIGTERM: requests in flight are answered).

    The access log goes to stdout as JSON lines; the start and ready lines to stderr.

    Raises:
        CnnlabError: the model cannot be loaded (as predict would say), or the port is taken.
    """
    from cnnlab.runtime.threads import passive_openmp

    passive_openmp()  # the model processes inherit it before they import torch
    with tempfile.TemporaryDirectory(prefix="cnnlab-serve-") as tmp:
        error_file = Path(tmp) / "setup-error.txt"
        server, _ = build_server(config, error_file)
        previous = signal.getsignal(signal.SIGTERM)
        main_pid = os.getpid()

        def terminate(signum: int, frame: Any) -> None:
            if os.getpid() != main_pid:  # a process forked from this one (LitServe's queue manager): just end
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            raise KeyboardInterrupt  # LitServe's graceful shutdown path

        signal.signal(signal.SIGTERM, terminate)
        describe_stderr(f"cnnlab serve: loading {config.model.name} ({config.workers} model process"
                        f"{'es' if config.workers > 1 else ''}, batches of up to {config.max_batch_size})")
        try:
            server.run(host=config.host, port=config.port, num_api_servers=1, log_level="warning",
                       generate_client_file=False, access_log=False,
                       limit_concurrency=4 * config.max_pending + 1024, timeout_keep_alive=5,
                       http=protocol_class(config.header_timeout_s))
        except RuntimeError as exc:
            failed = report_setup_error(error_file)
            if failed is not None:
                raise _rebuilt(*failed) from None
            raise CnnlabError(f"the server could not start: {exc}") from None
        except OSError as exc:
            raise UsageError(f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}") from None
        finally:
            signal.signal(signal.SIGTERM, previous)


def _rebuilt(kind: str, message: str) -> CnnlabError:
    """The model process's error as the same cnnlab error class (so the CLI exits with its code)."""
    from cnnlab import errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, CnnlabError):
        with contextlib.suppress(TypeError):
            return cls(message)
    return CnnlabError(message)


