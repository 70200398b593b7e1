"""Scoring a model's predictions against the labelled set, and comparing models on common images."""

from __future__ import annotations

import numpy as np

from cnnlab import metrics
from cnnlab.bench.result import ModelAccuracy, ModelResult
from cnnlab.datasets import LabelledImages
from cnnlab.labels import LabelMapping
from cnnlab.report.naming import unique_names


def accepted_sets(model: ModelResult, classes: list[str], mappings: dict[str, LabelMapping]) -> list[set[int]]:
    """For each user class, the model outputs that count as right: the label mapping for ImageNet
    models, the class of the same name for a model fine-tuned by ``cnnlab train``."""
    if model.run.spec.get("source") == "checkpoint":
        index = {name: i for i, name in enumerate(model.run.categories)}
        return [{index[c]} if c in index else set() for c in classes]
    return [set(mappings[c].indices) for c in classes]


def score(model: ModelResult, dataset: LabelledImages, mappings: dict[str, LabelMapping]) -> ModelAccuracy | None:
    """The accuracy of ``model``'s predictions on the images whose class maps onto its outputs."""
    pred = model.predictions
    if pred is None or len(pred["rows"]) == 0:
        return None
    rows = pred["rows"]
    y_all = np.asarray(dataset.targets, dtype=np.int64)[rows]
    accepted = accepted_sets(model, dataset.classes, mappings)
    keep = metrics.mapped_mask(y_all, accepted)
    unscored = [c for c, a in zip(dataset.classes, accepted) if not a]
    if not keep.any():
        return None
    topk, probs, y = pred["topk"][keep], pred["probs"][keep], y_all[keep]
    # top-5 only means something when the model has more than 5 classes to choose from
    num_classes = len(model.run.categories) or topk.shape[1]
    ks = (1, 5) if topk.shape[1] >= 5 and num_classes > 5 else (1,)
    summary = metrics.summarize(topk, probs, y, accepted, ks=ks)
    y_pred = metrics.predicted_user_class(topk[:, 0], accepted)
    return ModelAccuracy(
        scored=int(keep.sum()),
        summary=summary,
        per_class=metrics.per_class_report(y, y_pred, dataset.classes),
        confusion=metrics.confusion_matrix(y, y_pred, len(dataset.classes)),
        unscored_classes=unscored,
        hits1=metrics.topk_hits(topk, y, accepted, 1),
        rows=rows[keep],
    )


def comparisons(models: list[ModelResult]) -> list[metrics.PairwiseComparison]:
    """McNemar for each pair of scored models, on the images both of them scored."""
    scored = [m for m in models if m.accuracy is not None and not m.run.random_weights]
    names = unique_names([m.name for m in scored])
    out = []
    for i, a in enumerate(scored):
        for j in range(i + 1, len(scored)):
            b = scored[j]
            acc_a, acc_b = a.accuracy, b.accuracy
            assert acc_a is not None and acc_b is not None
            common = np.intersect1d(acc_a.rows, acc_b.rows)
            if len(common) == 0:
                continue  # e.g. a fine-tuned model and an ImageNet model that score different classes
            hits_a = acc_a.hits1[np.searchsorted(acc_a.rows, common)]
            hits_b = acc_b.hits1[np.searchsorted(acc_b.rows, common)]
            out.extend(metrics.compare_models({names[i]: hits_a, names[j]: hits_b}))
    return out
