"""Scoring a model's predictions against the labelled set, and comparing models on common images.

Accuracy counts only the images whose class maps onto the model's outputs. Calibration is
measured on the user's classes: the confidence of a prediction is the probability mass the model
puts on the predicted user class (all of "cat"'s ImageNet classes together, not only the top-1
output), and it is right when that class is the image's class. With ImageNet-ReaL labels, a
prediction is right when it is in the image's set of correct classes; images with an empty set
are left out and counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from cnnlab import metrics
from cnnlab.bench.result import ModelAccuracy, ModelResult, RealAccuracy
from cnnlab.bench.user_classes import accepted_sets
from cnnlab.imagedata.datasets import LabelledImages
from cnnlab.imagedata.labels import LabelMapping
from cnnlab.render.naming import unique_names


def score(model: ModelResult, dataset: LabelledImages, mappings: dict[str, LabelMapping], *,
          real_sets: Sequence[tuple[int, ...] | None] | None = None, gallery_size: int = 12) -> ModelAccuracy | None:
    """The accuracy of ``model``'s predictions on the images whose class maps onto its outputs."""
    records = model.predictions
    if records is None or len(records) == 0:
        return None
    k = model.run.topk or records["topk"].shape[1]
    rows = records["row"].astype(np.int64)
    y_all = np.asarray(dataset.targets, dtype=np.int64)[rows]
    accepted = accepted_sets(str(model.run.spec.get("source")), model.run.categories, dataset.classes,
                             [mappings[c].indices for c in dataset.classes])
    keep = metrics.mapped_mask(y_all, accepted)
    unscored = [c for c, a in zip(dataset.classes, accepted) if not a]
    if not keep.any():
        return None
    topk, probs, y = records["topk"][keep, :k], records["probs"][keep, :k], y_all[keep]
    n_classes = len(dataset.classes)
    pred_class = records["pred_class"][keep].astype(np.int64)
    y_pred = np.where(pred_class >= 0, pred_class, n_classes)  # n_classes: "other"
    mass = records["pred_mass"][keep].astype(np.float64)
    # top-5 only means something when the model has more than 5 classes to choose from
    num_outputs = len(model.run.categories) or k
    ks = (1, 5) if k >= 5 and num_outputs > 5 else (1,)
    summary = metrics.summarize(topk, probs, y, accepted, ks=ks)
    correct = y_pred == y
    summary = replace(summary, mean_confidence=metrics.mean_confidence(mass),
                      ece=metrics.expected_calibration_error(mass, correct))
    real = None
    if real_sets is not None and model.run.spec.get("source") != "checkpoint":
        real = _real_accuracy(records["topk"][:, :k], [real_sets[r] for r in rows], ks)
    return ModelAccuracy(
        scored=int(keep.sum()),
        summary=summary,
        per_class=metrics.per_class_report(y, y_pred, dataset.classes),
        confusion=metrics.sparse_confusion(y, y_pred, n_classes),
        unscored_classes=unscored,
        hits1=metrics.topk_hits(topk, y, accepted, 1),
        rows=rows[keep],
        mistakes=_most_confident_mistakes(model, dataset, rows[keep], y, y_pred, mass, topk, probs, gallery_size),
        real=real,
    )


def _real_accuracy(topk: np.ndarray, sets: Sequence[tuple[int, ...] | None], ks: tuple[int, ...]) -> RealAccuracy:
    usable = [i for i, s in enumerate(sets) if s]
    empty = sum(1 for s in sets if s is not None and not s)
    unknown = sum(1 for s in sets if s is None)
    hits = {}
    for k in ks:
        hits[k] = sum(1 for i in usable if set(topk[i, :k].tolist()) & set(sets[i] or ()))
    n = len(usable)
    return RealAccuracy(n=n, empty_sets=empty, not_covered=unknown, hits=hits,
                        ci={k: metrics.wilson_interval(h, n) for k, h in hits.items()})


def _most_confident_mistakes(model: ModelResult, dataset: LabelledImages, rows: np.ndarray, y: np.ndarray,
                             y_pred: np.ndarray, mass: np.ndarray, topk: np.ndarray, probs: np.ndarray,
                             size: int) -> list[dict[str, Any]]:
    """The ``size`` wrong predictions the model was surest of (fastai's top losses), for the report's gallery."""
    wrong = np.flatnonzero(y_pred != y)
    if size <= 0 or len(wrong) == 0:
        return []
    order = wrong[np.argsort(-mass[wrong], kind="stable")[:size]]
    categories = model.run.categories
    n_classes = len(dataset.classes)
    out = []
    for i in order:
        predicted = dataset.classes[y_pred[i]] if y_pred[i] < n_classes else "other"
        top = [{"index": int(c), "name": categories[int(c)] if 0 <= c < len(categories) else str(int(c)),
                "probability": float(p)} for c, p in zip(topk[i], probs[i]) if c >= 0]
        out.append({"path": str(dataset.paths[int(rows[i])]), "true": dataset.classes[int(y[i])],
                    "predicted": predicted, "confidence": float(mass[i]), "top": top})
    return out


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
