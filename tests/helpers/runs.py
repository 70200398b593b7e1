"""Settings of the small, fast runs that many tests share."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnlab.runtime.base import Runtime

#: Settings of the small, fast runs: the offline model's real weights at 64 px, the probe, 1 head + 2 full
#: epochs, a moving average of the weights (so that resume is checked with its state too); no search for crops
#: of one photo in the split (it embeds every image: tests/train/test_data_crops.py covers it).
FAST = {"model": "efficientnet_lite0", "epochs": 2, "freeze_epochs": 1, "batch_size": 8, "image_size": 64, "workers": 0,
        "ema": True, "crops": False}

#: The offline model's real weights at a small size, as ``cnnlab train`` options: every run takes seconds.
SMALL_TRAIN_ARGS = ["--model", "efficientnet_lite0", "--image-size", "32", "--workers", "0", "--batch-size", "8",
                    "--no-crops"]


def load_on(name: str, backend: str = "torch", *, random_weights: bool = False, weights: Path | None = None,
            calibration: list[Path] | tuple[()] = (), **runtime: Any) -> Runtime:
    """The public ``load_model(ModelSource, RuntimeOptions)``, its arguments made from keywords."""
    from cnnlab.options import ModelSource, RuntimeOptions
    from cnnlab.runtime.loader import load_model

    source = ModelSource(name=str(name), weights=weights, policy="random" if random_weights else "pretrained")
    return load_model(source, RuntimeOptions(backend=backend, **runtime), calibration=calibration)


def prepare_on(name: str, backend: str, *, random_weights: bool = False, weights: Path | None = None,
               **kwargs: Any) -> Path:
    """The runtime file (export, int8 version) of a model for ``backend``, its source made from keywords."""
    from cnnlab.options import ModelSource
    from cnnlab.runtime.loader import prepare_runtime_file

    source = ModelSource(name=str(name), weights=weights, policy="random" if random_weights else "pretrained")
    return prepare_runtime_file(source, backend, **kwargs)
