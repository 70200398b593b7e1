"""cnnlab: compare, fine-tune and use pretrained image classifiers on your own pictures.

The library mirrors the CLI; every job is one function that checks, locks, computes and writes::

    import cnnlab
    cnnlab.list_models("res*")
    model = cnnlab.load_model("efficientnet_lite0")
    result = cnnlab.predict(["photos/"], model=model, topk=5)
    bench = cnnlab.bench_models(cnnlab.BenchConfig(data="photos/", models=["efficientnet_lite0"]), out="results/")
    run = cnnlab.fine_tune(cnnlab.TrainConfig(data="photos/", model="efficientnet_lite0", out="runs/x"))

Names are imported on first use (``import cnnlab`` alone loads neither torch nor scipy), so the
command line starts fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import lazy_loader

__version__ = "0.3.0.dev0"

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "bench": ["BenchConfig", "BenchResult", "MeasureOptions", "bench_models"],
        "collect": ["CollectConfig", "CollectResult", "OutputFormat", "collect_images"],
        "models": ["LoadedModel", "ModelSpec", "get_spec", "list_models", "load_torch"],
        "options": ["ModelSource", "RuntimeOptions"],
        "prediction": ["PredictResult", "predict"],
        "review": ["ReviewConfig", "ReviewResult", "review_images"],
        "runtime": ["load_model"],
        "serve": ["ServeConfig"],
        "tracking": ["TrackedRun", "log_run_folder"],
        "train": ["TrainConfig", "TrainResult", "fine_tune", "find_lr"],
    },
)

if TYPE_CHECKING:
    from cnnlab.bench import BenchConfig, BenchResult, MeasureOptions, bench_models
    from cnnlab.collect import CollectConfig, CollectResult, OutputFormat, collect_images
    from cnnlab.models import LoadedModel, ModelSpec, get_spec, list_models, load_torch
    from cnnlab.options import ModelSource, RuntimeOptions
    from cnnlab.prediction import PredictResult, predict
    from cnnlab.review import ReviewConfig, ReviewResult, review_images
    from cnnlab.runtime import load_model
    from cnnlab.serve import ServeConfig
    from cnnlab.tracking import TrackedRun, log_run_folder
    from cnnlab.train import TrainConfig, TrainResult, find_lr, fine_tune
