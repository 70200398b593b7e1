"""Inference without PyTorch: an exported model in ONNX Runtime or OpenVINO on the CPU, decoding in-process.

Importing torch takes seconds (2.8 of the 5.9 s that ``predict`` took for nine photos on 2 cores), and a
runtime that takes host arrays needs none of it: decoding (Pillow), the CPU half of the preprocessing, the
model and the ranking run on numpy here, and decoding overlaps the model in threads rather than loader
processes. ``predict`` runs such a model with :func:`run_host_inference`;
:func:`cnnlab.runtime.inference.run_inference` stays the one loop for PyTorch models, features, GPU decoding
and bench (whose figures compare runtimes on the same loader).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.imagedata.datasets import SkippedFile
from cnnlab.progress import Progress
from cnnlab.runtime.batches import ImageFileDataset, InferenceBatch
from cnnlab.runtime.finite import require_finite

if TYPE_CHECKING:
    import numpy as np

    from cnnlab.imagedata.preprocess import Preprocessing
    from cnnlab.runtime.base import ExportedModel


class _Arrays:
    """A :class:`~cnnlab.runtime.batches.ImageLoader` of arrays: the preprocessing's ``load_array``."""

    def __init__(self, preprocessing: Preprocessing) -> None:
        self.preprocessing = preprocessing

    def load(self, path: str | Path | bytes, *, fast_decode: bool = True) -> np.ndarray:
        return self.preprocessing.load_array(path, fast_decode=fast_decode)


def run_host_inference(
    model: ExportedModel,
    paths: Sequence[Path],
    *,
    batch_size: int,
    workers: int = 0,
    fast_decode: bool = True,
    progress: Progress | None = None,
    task: str = "inference",
    description: str | None = None,
) -> Iterator[InferenceBatch[np.ndarray]]:
    """Run ``model`` over ``paths`` in order, one batch at a time, as
    :func:`~cnnlab.runtime.inference.run_inference` does (same batches, skipped-file records, finiteness check,
    timings and progress), with the logits as float32 arrays.

    ``workers`` threads decode the next batch while the model runs this one (Pillow and the runtime release the
    GIL while they work); 0: decoding and the model take turns in this thread.
    """
    import numpy as np

    progress = progress or Progress()
    dataset = ImageFileDataset(paths, _Arrays(model.preprocessing), fast_decode=fast_decode)
    step = max(1, batch_size)
    chunks = [range(first, min(first + step, len(paths))) for first in range(0, len(paths), step)]
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cnnlab-decode") if workers > 0 else None

    def decode(chunk: range) -> Callable[[], list[tuple[int, np.ndarray | None, str, str]]]:
        """The chunk's items: started in the pool now (collected later), or decoded when collected."""
        if pool is None:
            return lambda: [dataset[i] for i in chunk]
        futures = [pool.submit(dataset.__getitem__, i) for i in chunk]
        return lambda: [f.result() for f in futures]

    progress.start(task, description or model.name, total=len(paths))
    try:
        started = time.perf_counter()
        done = 0
        pending = decode(chunks[0]) if chunks else None
        for position in range(len(chunks)):
            t0 = time.perf_counter()
            assert pending is not None
            items = pending()
            pending = decode(chunks[position + 1]) if position + 1 < len(chunks) else None  # overlaps the model
            good = [(i, image) for i, image, _, _ in items if image is not None]
            skipped = [SkippedFile(str(paths[i]), reason, detail) for i, image, reason, detail in items if image is None]
            t1 = time.perf_counter()
            if good:
                logits = model.run_array(np.stack([image for _, image in good]))
            else:
                logits = np.zeros((0, model.spec.num_classes), dtype=np.float32)
            t2 = time.perf_counter()
            indices = [i for i, _ in good]
            require_finite(logits, model.name, [paths[i] for i in indices])
            done += len(items)
            progress.update(task, advance=len(items), info=f"{done / max(t2 - started, 1e-9):,.0f} img/s")
            yield InferenceBatch(indices, logits, None, skipped, t1 - t0, t2 - t1)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        progress.finish(task)
