"""What a model name denotes: a checkpoint file, an ONNX file or a registry name, told by its suffix.

Light to import (no torch): every command asks this first, and the ONNX Runtime path of ``predict`` never
imports torch.
"""

from __future__ import annotations

from pathlib import Path

#: Suffixes of the files that name a model by path rather than by registry name: checkpoints written
#: by ``cnnlab train`` (and ``torch.save``), and ONNX exports (run by :mod:`cnnlab.runtime`).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".pt", ".pth", ".ckpt")
ONNX_SUFFIXES: tuple[str, ...] = (".onnx",)


def model_file_kind(name: str | Path) -> str | None:
    """What a model name denotes, by its suffix (case-insensitive; the file need not exist yet):
    ``"checkpoint"`` (``.pt``, ``.pth``, ``.ckpt``), ``"onnx"`` (``.onnx``), or ``None`` (a registry name).

    This is the one test of "a model given as a file" for every command (bench, its workers, predict,
    train, export), so that a missing checkpoint is reported as a missing file, never as an unknown name.
    """
    suffix = Path(str(name)).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    return None


def is_checkpoint_file(name: str | Path) -> bool:
    """Whether ``name`` names a checkpoint file (see :func:`model_file_kind`)."""
    return model_file_kind(name) == "checkpoint"


def is_onnx_file(name: str | Path) -> bool:
    """Whether ``name`` names an ONNX export (see :func:`model_file_kind`)."""
    return model_file_kind(name) == "onnx"
