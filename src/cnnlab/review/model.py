"""What computes review's embeddings: ONNX Runtime when it is installed (and the model runs on the CPU), else PyTorch.

The ONNX Runtime path runs a cached feature-extractor export (:mod:`cnnlab.review.onnx_features`:
one pass gives the features and the logits) and skips importing torchvision and the model code;
measured 4-5x faster end to end than PyTorch eager on 2 shared CPU cores (``bench_review.py``:
29 against 152 s per 1,000 images; README, ``review``). Its features equal PyTorch's within float
rounding (cosine similarity >= 0.9999), but the embedding cache keeps them apart anyway
(:func:`cnnlab.review.embeddings.model_identity` names the backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.progress import Progress
from cnnlab.review.config import EmbeddingBackend

if TYPE_CHECKING:
    from cnnlab.review.config import ReviewConfig
    from cnnlab.runtime.base import Runtime

#: ``backend`` values of a review.
BACKENDS = tuple(b.value for b in EmbeddingBackend)


def onnxruntime_usable() -> bool:
    """onnxruntime, and what exporting needs (onnx, onnxscript), import."""
    from cnnlab.options import RuntimeChoice
    from cnnlab.runtime.loader import check_installed

    try:
        check_installed(RuntimeChoice.ONNXRUNTIME)
    except UsageError:
        return False
    return True


def choose_backend(backend: str, device: str) -> str:
    """``torch`` or ``onnxruntime``: ``auto`` is onnxruntime when it is installed and the device is the CPU."""
    from cnnlab.runtime.sessions import wants_gpu

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} for review; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "onnxruntime" if not wants_gpu(device) and onnxruntime_usable() else "torch"


def onnxruntime_workers(workers: int | None) -> int:
    """Decoding processes next to ONNX Runtime on the CPU: at least one.

    ONNX Runtime's threads do not spin while they wait, so one decoding process beside the model
    pays even on 2 cores, where PyTorch measured better decoding in-process: on 2 shared cores
    (efficientnet_lite0, 180 photos of ``bench_review.py``) embedding took 22-25 s per 1,000 images
    with decoding in-process (2 threads, batch 8-64), 8-9.5 s with one decoding process and one
    thread (batch 8-64), 9.3 s with one process and 2 threads, 9.0 s with 2 processes.
    """
    from cnnlab.runtime.inference import default_workers

    return max(1, default_workers("cpu")) if workers is None else workers


def default_batch_size(model: Runtime) -> int:
    """Images per batch when not given: 8 for ONNX Runtime, 32 for PyTorch.

    Measured on 2 shared CPU cores, efficientnet_lite0, 180 photos: ONNX Runtime (one decoding
    process, one thread) 7.7-8.0 s per 1,000 images at batch 8, 8.4-8.7 at 16, 9.0-9.5 at 32,
    9.5-10.6 at 64; PyTorch (channels_last, decoding in-process) 95-102 s at batch 32, 182-184 at 8.
    """
    return 32 if model.backend.value == "torch" else 8


def load_review_model(config: ReviewConfig, progress: Progress | None = None) -> tuple[Runtime, int | None, list[str]]:
    """The model review embeds with, the decoding processes to use, and notes (``auto`` falling back to PyTorch says why).

    Raises:
        UsageError: ``--backend onnxruntime`` without the onnx extra; what loading the model raises.
    """
    progress = progress or Progress()
    notes: list[str] = []
    backend = choose_backend(config.backend, config.device)
    if backend == "onnxruntime":
        from cnnlab.review.onnx_features import load_feature_model
        from cnnlab.runtime.inference import default_cpu_threads
        from cnnlab.runtime.sessions import wants_gpu

        workers = config.workers if wants_gpu(config.device) else onnxruntime_workers(config.workers)
        threads = config.threads or (default_cpu_threads(workers) if workers is not None else None)
        try:
            return load_feature_model(config.model, weights_dir=config.weights_dir, device=config.device,
                                      threads=threads, progress=progress), workers, notes
        except CnnlabError as exc:
            if config.backend != "auto":
                raise
            notes.append(f"embedded with PyTorch: the ONNX Runtime feature extractor failed ({exc})")
    from cnnlab.models.load import load_model

    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    model = load_model(config.model, weights_dir=config.weights_dir, device=config.device,
                       channels_last=config.channels_last, progress=False)
    return model, config.workers, notes
