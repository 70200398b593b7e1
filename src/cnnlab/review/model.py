"""What computes review's embeddings: ONNX Runtime when it is installed (and the model runs on the CPU), else PyTorch.

The ONNX Runtime path runs a cached feature-extractor export (:mod:`cnnlab.backends.features`:
one pass gives the features and the logits) and skips importing torchvision and the model code;
measured 2-3x faster end to end than PyTorch eager on 2 CPU cores (README, ``review``). Its features
equal PyTorch's within float rounding (cosine similarity >= 0.9999), but the embedding cache keeps
them apart anyway (:func:`cnnlab.review.embeddings.model_identity` names the backend).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, UsageError
from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.backends.base import Runtime
    from cnnlab.review.config import ReviewConfig

#: ``--backend`` values of ``cnnlab review``.
BACKENDS = ("auto", "torch", "onnxruntime")


def onnxruntime_usable() -> bool:
    """onnxruntime, and what exporting needs (onnx, onnxscript), import."""
    from cnnlab.backends.loader import check_installed
    from cnnlab.options import RuntimeChoice

    try:
        check_installed(RuntimeChoice.ONNXRUNTIME)
    except UsageError:
        return False
    return True


def choose_backend(backend: str, device: str) -> str:
    """``torch`` or ``onnxruntime``: ``auto`` is onnxruntime when it is installed and the device is the CPU."""
    from cnnlab.backends.sessions import wants_gpu

    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r} for review; choose from {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    return "onnxruntime" if not wants_gpu(device) and onnxruntime_usable() else "torch"


def load_review_model(config: ReviewConfig, progress: Progress | None = None) -> tuple[Runtime, list[str]]:
    """The model review embeds with, and notes (``auto`` falling back to PyTorch says why).

    Raises:
        UsageError: ``--backend onnxruntime`` without the onnx extra; what loading the model raises.
    """
    progress = progress or Progress()
    notes: list[str] = []
    backend = choose_backend(config.backend, config.device)
    if backend == "onnxruntime":
        from cnnlab.backends.features import load_feature_model

        try:
            return load_feature_model(config.model, weights_dir=config.weights_dir, device=config.device,
                                      threads=config.threads, progress=progress), notes
        except CnnlabError as exc:
            if config.backend != "auto":
                raise
            notes.append(f"embedded with PyTorch: the ONNX Runtime feature extractor failed ({exc})")
    from cnnlab.models import load_model

    if config.threads is not None:
        import torch

        torch.set_num_threads(config.threads)
    model = load_model(config.model, weights_dir=config.weights_dir, device=config.device,
                       channels_last=config.channels_last, progress=False)
    return model, notes
