"""Top-k predictions for image files from a pretrained or fine-tuned classifier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnnlab.datasets import SkippedFile, expand_paths, make_loader
from cnnlab.models import LoadedModel, load_model


@dataclass(frozen=True)
class ClassScore:
    """One of the top-k classes of an image."""

    index: int
    label: str
    probability: float


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first."""

    path: str
    top: tuple[ClassScore, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "top": [{"index": c.index, "label": c.label, "probability": c.probability} for c in self.top],
        }


@dataclass
class PredictResult:
    """Predictions for every usable file and a record of every file that was skipped."""

    model: str
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    random_weights: bool = False

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "random_weights": self.random_weights,
            "predictions": [p.to_dict() for p in self.predictions],
            "skipped": [s.to_dict() for s in self.skipped],
        }


def predict(
    inputs: Sequence[str | Path],
    *,
    model: str | LoadedModel = "efficientnet_lite0",
    topk: int = 5,
    batch_size: int = 16,
    workers: int | None = None,
    device: str = "auto",
    weights: str | Path | None = None,
    weights_dir: str | Path | None = None,
    on_start: Callable[[int], None] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> PredictResult:
    """Classify files, folders (searched recursively) and glob patterns.

    Files that cannot be decoded are listed in ``result.skipped`` with their reason; the other
    files are still predicted. ``on_batch(n)`` is called after each batch with the number of files
    it covered, after ``on_start(total)`` with the number of files found (for progress bars).
    """
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, weights=weights, weights_dir=weights_dir, device=device
    )
    paths, skipped = expand_paths(inputs)
    if on_start is not None:
        on_start(len(paths))
    result = PredictResult(loaded.name, skipped=list(skipped), random_weights=loaded.random_weights)
    k = max(1, min(topk, loaded.spec.num_classes))
    categories = loaded.categories
    loader = make_loader(
        paths, loaded.preprocessing, batch_size=batch_size, workers=workers, pin_memory=loaded.device.type == "cuda",
        device_type=loaded.device.type,
    )
    by_index: dict[int, Prediction] = {}
    with torch.inference_mode():
        for batch in loader:
            for i, reason, detail in batch.failed:
                result.skipped.append(SkippedFile(str(paths[i]), reason, detail))
            if batch.images is not None:
                probs = loaded(batch.images).softmax(dim=1)
                values, indices = probs.topk(k, dim=1)
                for row, i in enumerate(batch.indices):
                    top = tuple(
                        ClassScore(int(c), categories[int(c)], float(p))
                        for c, p in zip(indices[row].tolist(), values[row].tolist())
                    )
                    by_index[i] = Prediction(str(paths[i]), top)
            if on_batch is not None:
                on_batch(len(batch.indices) + len(batch.failed))
    result.predictions = [by_index[i] for i in sorted(by_index)]
    return result
