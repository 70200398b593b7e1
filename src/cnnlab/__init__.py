"""cnnlab: compare, fine-tune and use pretrained image classifiers on your own pictures.

The library mirrors the CLI::

    import cnnlab
    cnnlab.list_models("res*")
    model = cnnlab.load_model("efficientnet_lite0")
    result = cnnlab.predict(["photos/"], model=model, topk=5)
    bench = cnnlab.bench_models(cnnlab.BenchConfig(data="photos/", models=["efficientnet_lite0"]))

    from cnnlab.train import TrainConfig, train   # (the module name cnnlab.train stays a module)
    run = train(TrainConfig(data="photos/", model="efficientnet_lite0", out="runs/x"))
"""

from __future__ import annotations

from cnnlab.bench import BenchConfig, BenchResult, bench_models
from cnnlab.models import LoadedModel, load_model
from cnnlab.predict import PredictResult, predict
from cnnlab.zoo import ModelSpec, get_spec, list_models

__version__ = "0.1.0"

__all__ = [
    "BenchConfig",
    "BenchResult",
    "bench_models",
    "LoadedModel",
    "ModelSpec",
    "PredictResult",
    "get_spec",
    "list_models",
    "load_model",
    "predict",
]
