"""``serve``: a classifier as an HTTP service with dynamic batching, a web page, health and metrics.

* :mod:`~cnnlab.serve.config`: :class:`ServeConfig` (what to serve, where, the limits);
* :mod:`~cnnlab.serve.app`: :func:`run`, the server and its web routes;
* :mod:`~cnnlab.serve.requests`: a request's body and images read within the limits;
* :mod:`~cnnlab.serve.state`: what the web process holds (bytes in flight, counters) and the error body;
* :mod:`~cnnlab.serve.access_log`: one JSON line per request;
* :mod:`~cnnlab.serve.api`: the model side, one LitServe API per model process, on predict's code path;
* :mod:`~cnnlab.serve.metrics`: the Prometheus counters and histograms;
* :mod:`~cnnlab.serve.client`: :func:`~cnnlab.serve.client.classify`, a small Python client.

Names are imported on first use, so the CLI can read the config's defaults without the web stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "config": ["ServeConfig"],
        "app": ["run"],
        "client": ["classify"],
    },
)

if TYPE_CHECKING:
    from cnnlab.serve.app import run
    from cnnlab.serve.client import classify
    from cnnlab.serve.config import ServeConfig
