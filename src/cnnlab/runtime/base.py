"""What every runtime offers the inference loop (:class:`Runtime`), and the ONNX-file runtime itself.

:class:`~cnnlab.models.load.LoadedModel` (PyTorch) and :class:`ExportedModel` (an ONNX file in ONNX
Runtime or OpenVINO) both satisfy :class:`Runtime`, so :func:`cnnlab.runtime.inference.run_inference`,
``predict`` and ``bench`` treat them alike: call it on a ``uint8`` batch, get float32 logits.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

from cnnlab.errors import UsageError, WeightsIntegrityError
from cnnlab.models.spec import FromSpec
from cnnlab.options import Backend, Quantization

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnlab.imagedata.preprocess import Preprocessing
    from cnnlab.models.registry import ModelSpec

#: The pip extra that installs each runtime's packages.
EXTRAS = {Backend.ONNXRUNTIME: "cnnlab[onnx]", Backend.OPENVINO: "cnnlab[openvino]"}


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module``, or raise a :class:`UsageError` (exit 2) naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(f"{what} needs the Python package {module.split('.')[0]}: pip install '{extra}'") from None


class Runtime(Protocol):
    """A classifier ready for inference, whatever executes it."""

    spec: ModelSpec
    random_weights: bool
    weights_path: Path | None

    @property
    def device(self) -> torch.device:
        """Where input batches go (``cpu`` for ONNX Runtime and OpenVINO, which take host arrays)."""
        ...

    @property
    def name(self) -> str: ...

    @property
    def preprocessing(self) -> Preprocessing: ...

    @property
    def categories(self) -> tuple[str, ...]: ...

    @property
    def backend(self) -> Backend: ...

    @property
    def quantization(self) -> Quantization: ...

    @property
    def precision_label(self) -> str:
        """``fp32``, ``bf16``... or ``int8``: what the arithmetic is."""
        ...

    def runtime_info(self) -> dict[str, Any]:
        """Backend, precision, execution provider, threads and model file: for results and reports."""
        ...

    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor: ...


@dataclass
class ExportedModel(FromSpec):
    """An exported ONNX file run by ONNX Runtime or OpenVINO: ``uint8`` batch in, float32 logits out.

    ``run`` takes a contiguous ``uint8`` array (N, 3, crop, crop) and returns the logits array;
    ``provider`` says what executes it (``CPUExecutionProvider``, ``CUDAExecutionProvider``,
    ``openvino CPU``), ``threads`` how many threads it was given.
    """

    spec: ModelSpec
    file: Path
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    backend: Backend
    quantization: Quantization
    provider: str
    threads: int
    random_weights: bool = False
    weights_path: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        """The CPU: these runtimes take host arrays (a CUDA provider copies them itself); torch is imported
        only when this is asked for, which the loop without PyTorch never does."""
        import torch

        return torch.device("cpu")

    @property
    def precision_label(self) -> str:
        return "int8" if self.quantization is Quantization.INT8 else "fp32"

    def runtime_info(self) -> dict[str, Any]:
        return {"backend": self.backend.value, "quantization": self.quantization.value,
                "precision": self.precision_label, "provider": self.provider, "threads": self.threads,
                "file": str(self.file), **self.details}

    def run_array(self, batch_uint8: np.ndarray) -> np.ndarray:
        """The logits of a ``uint8`` (N, 3, crop, crop) array, as a float32 array (no torch: the loop without
        PyTorch calls this).

        Raises:
            WeightsIntegrityError: not one row of outputs per image (a graph that ignores the batch dimension).
        """
        import numpy as np

        array = np.ascontiguousarray(batch_uint8)
        logits = np.asarray(self.run(array), dtype=np.float32)
        if logits.ndim != 2 or logits.shape[0] != array.shape[0]:  # numpy would copy one row to every image
            raise WeightsIntegrityError(f"{self.file} ignores the batch dimension: it gives outputs of shape "
                                        f"{list(logits.shape)} for a batch of {array.shape[0]} images")
        return logits

    def __call__(self, batch_uint8: torch.Tensor) -> torch.Tensor:
        import torch

        return torch.from_numpy(self.run_array(batch_uint8.cpu().numpy()))
