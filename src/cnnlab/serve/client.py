"""A small Python client of ``cnnlab serve``: :func:`classify` sends image files and returns the answer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError


class ServeError(CnnlabError):
    """The server refused a request: ``status`` and ``reason`` as it answered them."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{status} {reason}: {detail}")
        self.status = status
        self.reason = reason
        self.detail = detail


def classify(url: str, paths: Sequence[str | Path], *, topk: int | None = None, timeout: float = 60.0) -> dict[str, Any]:
    """Send the image files ``paths`` in one request to the server at ``url`` (``http://127.0.0.1:8000``).

    Returns the server's JSON answer: ``predictions`` (one per usable image: ``name``, ``top`` with
    ``index``, ``label`` and ``probability``, ``unknown``), ``skipped`` (the others, with their reason),
    ``model``, ``backend`` and ``timing``.

    Raises:
        ServeError: the server answered with an error status (413 too large, 415 not an image, 503 busy...).
    """
    import httpx

    files = [("files", (Path(p).name, Path(p).read_bytes(), "application/octet-stream")) for p in paths]
    params = {"topk": str(topk)} if topk is not None else None
    response = httpx.post(url.rstrip("/") + "/v1/predict", files=files, params=params, timeout=timeout)
    try:
        body = response.json()
    except ValueError:
        body = {"error": "not-json", "detail": response.text[:200]}
    if response.status_code != 200:
        raise ServeError(response.status_code, str(body.get("error", "error")), str(body.get("detail", "")))
    return dict(body)
