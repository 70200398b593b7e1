"""What computes review's embeddings: ONNX Runtime when it is installed (and the model runs on the CPU), else PyTorch.

The ONNX Runtime path runs a cached feature-extractor export (:mod:`cnnlab.review.onnx_features`:
one pass gives the features and the logits) and skips importing torchvision and the model code, so it is
several times faster end to end than PyTorch eager on small CPUs (``benchmarks/bench_review.py --backends
torch,onnxruntime`` measures both; figures in docs/benchmarks.md). Its features equal PyTorch's within float
rounding (cosine similarity >= 0.9999), but the embedding cache keeps them apart anyway
(:func:`cnnlab.review.embeddings.model_identity` names the backend).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.options import ModelSource, RuntimeOptions
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
    pays even on 2 cores, where PyTorch does better decoding in-process (``benchmarks/bench_review.py``
    measures both layouts).
    """
    from cnnlab.runtime.cores import default_workers

    return max(1, default_workers("cpu")) if workers is None else workers


def default_batch_size(model: Runtime) -> int:
    """Images per batch when not given: 8 for ONNX Runtime, 32 for PyTorch.

    Each is the fastest batch size on 2 CPU cores in ``benchmarks/bench_review.py`` (figures in
    docs/benchmarks.md).
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
        from cnnlab.runtime.cores import default_cpu_threads
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
    from cnnlab.models.load import load_torch

    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    model = load_torch(ModelSource(name=config.model, weights_dir=Path(config.weights_dir) if config.weights_dir else None),
                       RuntimeOptions(device=config.device, channels_last=config.channels_last, fold_bn=True),
                       progress=False)
    return model, config.workers, notes
