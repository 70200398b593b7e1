"""Reading a ``POST /v1/predict`` request within the limits: the body (size, buffer budget, time), its images
(multipart files, JSON with base64, or a raw image body), their pixels read from the headers before any is
decoded, and the ``topk`` parameter. Anything outside the limits is a :class:`~cnnlab.serve.state.RequestRefused`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from typing import Any

from fastapi import Request
from starlette.exceptions import HTTPException

from cnnlab.serve.config import ServeConfig
from cnnlab.serve.probe import header_size
from cnnlab.serve.state import RequestRefused, ServerState

#: Content types of one raw image as the whole body (``curl --data-binary @photo.jpg``).
RAW_TYPES = ("application/octet-stream",)


async def read_body(request: Request, state: ServerState) -> bytes:
    """The request body within the size limit, the buffer budget and the time limit (refused otherwise)."""
    config = state.config
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise RequestRefused(400, "bad-request", "the Content-Length header is not a number") from None
        if size > config.max_request_bytes:
            raise RequestRefused(413, "request-too-large",
                                 f"the request body has {size:,} bytes; the limit is {config.max_request_bytes:,}")
    chunks: list[bytes] = []
    held = 0

    async def collect() -> None:
        nonlocal held
        async for chunk in request.stream():
            if not chunk:
                continue
            if held + len(chunk) > config.max_request_bytes:
                raise RequestRefused(413, "request-too-large",
                                     f"the request body has more than the limit of {config.max_request_bytes:,} bytes")
            if not state.reserve(len(chunk)):
                raise RequestRefused(503, "overloaded", "the server holds as many request bytes as it may; try again")
            held += len(chunk)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout=config.body_timeout_s)
    except TimeoutError:
        state.release(held)
        raise RequestRefused(408, "body-timeout", f"the request body did not arrive within {config.body_timeout_s:g} s") \
            from None
    except BaseException:
        state.release(held)
        raise
    request.scope.setdefault("cnnlab", {})["held"] = held
    return b"".join(chunks)


def base64_image(item: Any, position: int) -> tuple[str, bytes]:
    """One JSON image: a base64 string (or ``data:`` URL), or ``{"name": ..., "data": base64}``."""
    name = f"image-{position}"
    if isinstance(item, dict):
        name = str(item.get("name") or name)[:200]
        item = item.get("data")
    if not isinstance(item, str):
        raise RequestRefused(400, "bad-request", f"images[{position}] must be a base64 string or "
                                                 '{"name": ..., "data": base64}')
    if item.startswith("data:"):
        item = item.partition(",")[2]
    try:
        return name, base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRefused(400, "bad-base64", f"images[{position}] is not valid base64") from None


async def parse_images(request: Request, body: bytes, content_type: str, state: ServerState) -> list[tuple[str, bytes]]:
    """The (name, bytes) of every image of a request: multipart files, JSON with base64, or a raw image body."""
    config = state.config
    if content_type == "multipart/form-data":

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, replay).form(max_files=config.max_images, max_fields=config.max_images)
        except HTTPException as exc:  # starlette's multipart errors: too many files or fields, malformed parts
            detail = str(exc.detail)
            if detail.startswith(("Too many files", "Too many fields")):
                raise RequestRefused(413, "too-many-images", f"more than {config.max_images} parts; the limit is "
                                                             f"{config.max_images} images") from None
            raise RequestRefused(400, "bad-multipart", f"the multipart body cannot be read: {detail}") from None
        images: list[tuple[str, bytes]] = []
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                images.append((str(getattr(value, "filename", "") or f"image-{len(images)}")[:200], await value.read()))
        await form.close()
        return images
    if content_type == "application/json":
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise RequestRefused(400, "bad-json", "the request body is not valid JSON") from None
        except RecursionError:  # arrays or objects nested deeper than Python's parser goes
            raise RequestRefused(400, "bad-json", "the request body nests JSON arrays or objects too deeply") from None
        items = document.get("images") if isinstance(document, dict) else None
        if isinstance(document, dict) and items is None and "image" in document:
            items = [document["image"]]
        if not isinstance(items, list):
            raise RequestRefused(400, "bad-request", 'a JSON request is {"images": [base64, ...]}')
        if len(items) > config.max_images:
            raise RequestRefused(413, "too-many-images", f"{len(items)} images; the limit is {config.max_images}")
        return [base64_image(item, i) for i, item in enumerate(items)]
    return [("image-0", body)]  # image/* or application/octet-stream: the body is the image


def media_type(request: Request) -> str:
    """The request's media type, lower case, without parameters."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def weigh_images(images: list[tuple[str, bytes]], config: ServeConfig) -> dict[int, tuple[str, str]]:
    """The images over the pixel limit (position: reason, detail), read from their headers; a request whose
    other images add up to more than the request's pixel budget is refused (413) before any is decoded."""
    refused: dict[int, tuple[str, str]] = {}
    total = 0
    for position, (_, data) in enumerate(images):
        size = header_size(data)
        if size is None:  # no format recognises it: the model process says why, as predict would
            continue
        width, height = size
        pixels = width * height
        if pixels > config.max_pixels:
            refused[position] = ("decompression-bomb", f"{width}x{height} = {pixels:,} pixels exceeds the limit "
                                                       f"of {config.max_pixels:,}")
            continue
        total += pixels
    if total > config.max_request_pixels:
        raise RequestRefused(413, "too-many-pixels", f"the images of this request add up to {total:,} pixels; the "
                                                     f"limit per request is {config.max_request_pixels:,}: send "
                                                     "fewer or smaller images per request")
    return refused


def requested_topk(request: Request, most: int) -> int:
    """The ``topk`` query parameter, checked against the server's own ``most`` (400 otherwise)."""
    value = request.query_params.get("topk")
    if value is None:
        return most
    try:
        k = int(value)
    except ValueError:
        raise RequestRefused(400, "bad-request", f"topk must be a whole number, not {value!r}") from None
    if not 1 <= k <= most:
        raise RequestRefused(400, "bad-request", f"topk must be from 1 to {most} (the server's topk)")
    return k
