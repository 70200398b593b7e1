"""Running a classifier on PyTorch, ONNX Runtime or OpenVINO, in fp32 or int8: :func:`load_runtime`.

* :mod:`~cnnlab.runtime.base`: :class:`Runtime`, what the inference loop needs from any model,
  and :class:`ExportedModel`, an ONNX file in ONNX Runtime or OpenVINO;
* :mod:`~cnnlab.runtime.artifacts`: the export cache, and ``.onnx`` files as models;
* :mod:`~cnnlab.runtime.sessions`: sessions with explicit threads and execution providers;
* :mod:`~cnnlab.runtime.quantize`: int8 variants calibrated on the user's images;
* :mod:`~cnnlab.runtime.loader`: :func:`load_runtime` and the two steps it is made of.

Names are imported on first use: none of the runtimes is imported before a model needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "base": ["ExportedModel", "Runtime"],
        "loader": ["check_installed", "load_model", "load_runtime", "load_runtime_file", "prepare_runtime_file"],
    },
)

if TYPE_CHECKING:
    from cnnlab.runtime.base import ExportedModel, Runtime
    from cnnlab.runtime.loader import check_installed, load_model, load_runtime, load_runtime_file, prepare_runtime_file
