"""The server's counters and histograms, written in the Prometheus text format for ``GET /metrics``.

All of them live in the one web process (every request passes through it); the model processes report
each batch's size and time inside their answers, and a batch is counted once, however many requests
shared it. No client library is needed for a handful of series.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from collections.abc import Sequence

#: Upper bounds of the latency buckets, in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Upper bounds of the batch size buckets, in images (or requests).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Batches remembered so that one seen by several requests is counted once.
_REMEMBERED_BATCHES = 4096

PREFIX = "cnnlab_serve"


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus reads them."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * len(self.bounds)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_number(b)}"}} {c}' for b, c in zip(self.bounds, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.total}')
        suffix = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{suffix} {_number(self.sum)}")
        out.append(f"{name}_count{suffix} {self.total}")
        return out


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class ServeMetrics:
    """Requests by path and status, errors by reason, images, batch sizes, latency; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.errors: dict[str, int] = defaultdict(int)
        self.images = 0
        self.batch_images = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.model_seconds = Histogram(LATENCY_BUCKETS)
        self._seen: OrderedDict[str, None] = OrderedDict()
        self.in_flight = 0
        self.waiting = 0

    def request(self, path: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, method, status)] += 1
            self.latency.setdefault(path, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def error(self, reason: str, count: int = 1) -> None:
        with self._lock:
            self.errors[reason] += count

    def predicted(self, images: int) -> None:
        with self._lock:
            self.images += images

    def batch(self, batch_id: str, images: int, requests: int, model_ms: float) -> None:
        """A model batch, counted the first time any of its requests reports it."""
        if images == 0:  # a batch of requests whose images all failed to decode: the model did not run
            return
        with self._lock:
            if batch_id in self._seen:
                return
            self._seen[batch_id] = None
            if len(self._seen) > _REMEMBERED_BATCHES:
                self._seen.popitem(last=False)
            self.batch_images.observe(images)
            self.batch_requests.observe(requests)
            self.model_seconds.observe(model_ms / 1000.0)

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        p = PREFIX
        with self._lock:
            lines = [f"# HELP {p}_requests_total HTTP requests answered, by path, method and status.",
                     f"# TYPE {p}_requests_total counter"]
            lines += [f'{p}_requests_total{{path="{_label(path)}",method="{method}",status="{status}"}} {n}'
                      for (path, method, status), n in sorted(self.requests.items())]
            lines += [f"# HELP {p}_errors_total Requests refused or failed, by reason.",
                      f"# TYPE {p}_errors_total counter"]
            lines += [f'{p}_errors_total{{reason="{_label(reason)}"}} {n}' for reason, n in sorted(self.errors.items())]
            lines += [f"# HELP {p}_images_total Images classified.", f"# TYPE {p}_images_total counter",
                      f"{p}_images_total {self.images}"]
            lines += [f"# HELP {p}_request_duration_seconds Time from request to answer, by path.",
                      f"# TYPE {p}_request_duration_seconds histogram"]
            for path, histogram in sorted(self.latency.items()):
                lines += histogram.lines(f"{p}_request_duration_seconds", f'path="{_label(path)}"')
            lines += [f"# HELP {p}_batch_images Images per model batch (dynamic batching).",
                      f"# TYPE {p}_batch_images histogram", *self.batch_images.lines(f"{p}_batch_images"),
                      f"# HELP {p}_batch_requests Requests per model batch.",
                      f"# TYPE {p}_batch_requests histogram", *self.batch_requests.lines(f"{p}_batch_requests"),
                      f"# HELP {p}_batch_model_seconds Time in the model per batch.",
                      f"# TYPE {p}_batch_model_seconds histogram", *self.model_seconds.lines(f"{p}_batch_model_seconds"),
                      f"# HELP {p}_in_flight Prediction requests being read, waiting or running.",
                      f"# TYPE {p}_in_flight gauge", f"{p}_in_flight {self.in_flight}",
                      f"# HELP {p}_waiting Prediction requests read and waiting for the model or running "
                      "(the places of max_pending).",
                      f"# TYPE {p}_waiting gauge", f"{p}_waiting {self.waiting}"]
        return "\n".join(lines) + "\n"


def parse_histogram(text: str, name: str) -> dict[str, float]:
    """``{le: cumulative count}`` of histogram ``name`` in a ``/metrics`` text (for clients and benchmarks)."""
    found: dict[str, float] = {}
    start = f"{name}_bucket{{"
    for line in text.splitlines():
        if line.startswith(start):
            labels, _, value = line[len(start):].partition("} ")
            le = labels.split('le="', 1)[1].split('"', 1)[0]
            found[le] = float(value)
    return found
