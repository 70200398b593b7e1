"""cnnlab: compare, fine-tune and use pretrained image classifiers on your own pictures.

The library mirrors the CLI::

    import cnnlab
    cnnlab.list_models("res*")
    model = cnnlab.load_model("efficientnet_lite0")
    result = cnnlab.predict(["photos/"], model=model, topk=5)
    bench = cnnlab.bench_models(cnnlab.BenchConfig(data="photos/", models=["efficientnet_lite0"]))
    run = cnnlab.fine_tune(cnnlab.TrainConfig(data="photos/", model="efficientnet_lite0", out="runs/x"))

Names are imported on first use (``import cnnlab`` alone loads neither torch nor scipy), so the
command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__version__ = "0.2.0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "bench": ["BenchConfig", "BenchResult", "bench_models"],
        "models": ["LoadedModel", "ModelSpec", "get_spec", "list_models", "load_model"],
        "prediction": ["PredictResult", "predict"],
        "train": ["TrainConfig", "TrainResult", "fine_tune"],
    },
)

if TYPE_CHECKING:
    from cnnlab.bench import BenchConfig, BenchResult, bench_models
    from cnnlab.models.load import LoadedModel, load_model
    from cnnlab.models.registry import ModelSpec, get_spec, list_models
    from cnnlab.prediction import PredictResult, predict
    from cnnlab.train import TrainConfig, TrainResult, fine_tune
