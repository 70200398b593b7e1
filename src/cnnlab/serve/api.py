"""The model side of ``cnnlab serve``: a LitServe :class:`ClassifierAPI` that runs in each model process.

Each request carries the raw bytes of its images (the web process only checks sizes and content types).
Here they take predict's path: decoded and preprocessed by the same loader dataset and transform
(:class:`~cnnlab.runtime.batches.ImageFileDataset` over bytes, :meth:`Preprocessing.load
<cnnlab.imagedata.preprocess.Preprocessing.load>`, the same decoding guards), run by the runtime that
:func:`cnnlab.runtime.loader.load_runtime` gives (``auto``: :func:`~cnnlab.runtime.loader.choose_backend`,
as predict chooses), and ranked as predict ranks (softmax over the logits, top-k, the unknown threshold).

An image that cannot be used becomes a record with its reason, never an exception: LitServe answers every
request of a batch with the error of any one of them, so one bad upload must not fail its neighbours.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import TYPE_CHECKING, Any, cast

import litserve as ls
from litserve.loops.simple_loops import BatchedLoop

from cnnlab.serve.config import ServeConfig

if TYPE_CHECKING:
    import torch

    from cnnlab.runtime.base import Runtime

#: The path LitServe knows the model by (the web process answers it itself: :mod:`cnnlab.serve.app`).
API_PATH = "/v1/predict"
#: A request for the model's description instead of predictions (the web process asks once, at start).
DESCRIBE = "describe"
#: The payload key of the wall-clock time (``time.time()``) after which the web process no longer waits for the
#: answer (it has answered 504): the model process then skips the request's decoding instead of doing it for nobody.
EXPIRES = "expires"


@dataclass
class Decoded:
    """One request after decoding: its images as ``uint8`` tensors, and the position and reason of each
    image that could not be used."""

    images: list[torch.Tensor] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    failed: list[tuple[int, str, str]] = field(default_factory=list)
    count: int = 0
    describe: bool = False


class _Limited:
    """Predict's transform (:meth:`Preprocessing.load`) with the server's pixel limit."""

    def __init__(self, preprocessing: Any, max_pixels: int) -> None:
        self.preprocessing = preprocessing
        self.max_pixels = max_pixels

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> torch.Tensor:
        tensor: torch.Tensor = self.preprocessing.load(path, fast_decode=fast_decode, max_pixels=self.max_pixels)
        return tensor


class _Peeked:
    """A request queue with one request already taken from it, handed out first."""

    def __init__(self, queue: Any, first: Any) -> None:
        self.queue = queue
        self.first = [first]

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        return self.first.pop() if self.first else self.queue.get(block, timeout)

    def get_nowait(self) -> Any:
        return self.first.pop() if self.first else self.queue.get_nowait()


#: Seconds an idle model process waits for a request at a time.
IDLE_WAIT_S = 1.0


class WaitingBatchedLoop(BatchedLoop):
    """LitServe's batched loop, except that an idle model process waits for the first request of a batch
    instead of asking the queue for one every millisecond (which keeps a core busy while nothing happens);
    the batch timeout then runs from that first request, as dynamic batching means it."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple[list[Any], list[Any]]:
        try:
            first = request_queue.get(timeout=IDLE_WAIT_S)
        except Empty:
            return [], []
        batches, timed_out = super().get_batch_requests(lit_api, _Peeked(request_queue, first), transport)
        return batches, timed_out


class ClassifierAPI(ls.LitAPI):
    """Decode, batch, classify: what LitServe runs in each model process (made in the main process, pickled)."""

    def __init__(self, config: ServeConfig, error_file: str | None = None) -> None:
        super().__init__(max_batch_size=config.max_batch_size, batch_timeout=config.batch_timeout_ms / 1000.0,
                         api_path=API_PATH, loop=WaitingBatchedLoop() if config.max_batch_size > 1 else "auto")
        self.config = config
        self.error_file = error_file
        self.model: Runtime | None = None
        self.threshold: float | None = None
        self.description: dict[str, Any] = {}
        self.batches = 0

    def setup(self, device: str) -> None:
        """Load the model as predict loads it; a user error is written to ``error_file`` for the main process."""
        from cnnlab.errors import CnnlabError

        try:
            self._load(device)
        except CnnlabError as exc:
            if self.error_file:
                Path(self.error_file).write_text(f"{type(exc).__name__}\n{exc}", encoding="utf-8")
            import logging

            logging.getLogger("litserve.loops.loops").setLevel(logging.CRITICAL)  # said once, by the main process
            raise

    def _load(self, device: str) -> None:
        from cnnlab.runtime.threads import passive_openmp

        passive_openmp()
        from cnnlab.models.files import is_checkpoint_file
        from cnnlab.prediction import export_facts, resolve_unknown_threshold
        from cnnlab.runtime.cores import available_cores
        from cnnlab.runtime.loader import choose_backend, load_runtime

        config = self.config
        runtime = config.runtime
        if device.startswith("cuda") and runtime.device in ("auto", "cuda"):
            runtime = runtime.replace(device=device)
        if runtime.threads is None and not device.startswith("cuda"):  # the cores shared by the model processes
            runtime = runtime.replace(threads=max(1, available_cores() // config.workers))
        source = config.model
        choice = None
        if config.auto_backend:
            chosen, why = choose_backend(source, runtime)
            runtime = runtime.replace(backend=chosen)
            choice = {"auto": True, "backend": chosen.value, "reason": why}
        model = load_runtime(source, runtime)
        name = source.name
        checkpoint = Path(name) if is_checkpoint_file(name) else None
        onnx_file = Path(name) if name.endswith(".onnx") else None
        facts = export_facts(model) if checkpoint is not None else None
        self.threshold = resolve_unknown_threshold(config.unknown_threshold, checkpoint, None, onnx_file, facts=facts)
        self.model = model
        self.runtime = runtime
        info = model.runtime_info()
        if choice is not None:
            info["backend_choice"] = choice
        self.description = {
            "model": model.name,
            "classes": list(model.categories),
            "num_classes": len(model.categories),
            "preprocessing": model.preprocessing.to_dict(),
            "runtime": info,
            "random_weights": bool(model.random_weights),
            "unknown_threshold": self.threshold,
            "topk": min(config.topk, len(model.categories)),
            "pid": os.getpid(),
        }
        self._warm_up()

    def _warm_up(self) -> None:
        """One black image through the model: the first request does not pay for lazy initialisation."""
        import torch

        assert self.model is not None
        size = self.model.preprocessing.crop_size
        with torch.inference_mode():
            self.model(torch.zeros(1, 3, size, size, dtype=torch.uint8))

    def decode_request(self, request: dict[str, Any]) -> Decoded:
        """The images' bytes, decoded as predict decodes a file (failures kept with their reason)."""
        from cnnlab.runtime.batches import ImageFileDataset

        if request.get(DESCRIBE):
            return Decoded(describe=True)
        items = request.get("images") or []
        expires = request.get(EXPIRES)
        if expires is not None and time.time() > expires:
            return Decoded(count=len(items), failed=[(i, "timeout", "the request timed out before it was decoded")
                                                     for i in range(len(items))])
        assert self.model is not None
        transform = _Limited(self.model.preprocessing, self.config.max_pixels)
        dataset = ImageFileDataset(cast(Sequence[Path], items), transform, fast_decode=self.runtime.fast_decode)
        decoded = Decoded(count=len(items))
        for index in range(len(items)):
            i, tensor, reason, detail = dataset[index]
            if tensor is None:
                decoded.failed.append((i, reason, detail))
            else:
                decoded.images.append(tensor)
                decoded.positions.append(i)
        return decoded

    def batch(self, inputs: list[Decoded]) -> list[Decoded]:
        return inputs

    def unbatch(self, output: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return output

    def predict(self, x: Decoded | list[Decoded]) -> dict[str, Any] | list[dict[str, Any]]:
        """Every image of every request of the batch through the model, in chunks of the max batch size."""
        import numpy as np
        import torch

        from cnnlab.prediction import rank
        from cnnlab.runtime.finite import require_finite

        requests = x if isinstance(x, list) else [x]
        model = self.model
        assert model is not None
        images = [t for r in requests for t in r.images]
        started = time.perf_counter()
        probabilities: list[np.ndarray] = []
        classes: list[np.ndarray] = []
        k = max(1, min(self.config.topk, len(model.categories)))
        step = self.config.max_batch_size
        for first in range(0, len(images), step):
            chunk = torch.stack(images[first:first + step])
            with torch.inference_mode():
                logits = model(chunk).cpu()
            require_finite(logits, model.name)
            values, indices = rank(logits, k)  # as cnnlab.prediction.predict ranks
            probabilities.append(values)
            classes.append(indices)
        model_s = time.perf_counter() - started
        self.batches += 1
        batch = {"id": f"{os.getpid()}-{self.batches}", "images": len(images), "requests": len(requests),
                 "model_ms": round(model_s * 1000, 3)}
        values_all = np.concatenate(probabilities).tolist() if probabilities else []
        indices_all = np.concatenate(classes).tolist() if classes else []
        categories = model.categories
        outputs: list[dict[str, Any]] = []
        row = 0
        for request in requests:
            if request.describe:
                outputs.append({DESCRIBE: self.description})
                continue
            results: list[dict[str, Any] | None] = [None] * request.count
            for position in request.positions:
                top = [{"index": int(c), "label": categories[int(c)], "probability": float(p)}
                       for c, p in zip(indices_all[row], values_all[row])]
                unknown = self.threshold is not None and values_all[row][0] < self.threshold
                results[position] = {"top": top, "unknown": unknown}
                row += 1
            for position, reason, detail in request.failed:
                results[position] = {"error": reason, "detail": detail}
            outputs.append({"model": model.name, "backend": model.backend.value, "results": results, "batch": batch})
        return outputs if isinstance(x, list) else outputs[0]

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


def report_setup_error(error_file: Path) -> tuple[str, str] | None:
    """The (error class name, message) a model process wrote when it could not load the model, if any."""
    try:
        kind, _, message = error_file.read_text(encoding="utf-8").partition("\n")
    except OSError:
        return None
    return kind, message


def describe_stderr(line: str) -> None:
    """A line for the person who started the server (stderr: stdout carries the access log)."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
