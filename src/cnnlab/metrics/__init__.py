"""Accuracy, confusion, calibration and significance metrics for a labelled image benchmark.

Setting
-------
There are ``N`` samples. Sample ``i`` belongs to the *user class* ``y[i]`` in ``0..C-1``. Each
user class ``c`` has a set of *accepted model outputs* ``accepted[c]``: for an ImageNet model the
user class "cat" may accept the ImageNet indices ``{281, 282, 283, 284, 285}``; for a model
fine-tuned on the user's classes ``accepted[c] == {c}``. The model gives, for each sample, its
``K`` best output indices ``topk[i, :]`` ordered by decreasing score and their softmax
probabilities ``topk_prob[i, :]``.

A user class with an empty accepted set is *unmapped*: no prediction can ever be right for it.
Callers should drop those samples before scoring (:func:`mapped_mask` finds them); every function
here still accepts them and simply counts them as misses.

Everything here is a pure function of numpy arrays (no torch, no I/O). Inputs are validated and
a :class:`ValueError` (or :class:`TypeError` for a wrong dtype) names the offending argument.
Rates of an empty set are ``nan``; the ``to_dict`` methods turn ``nan`` into ``None`` so their
output can be written as strict JSON.

Modules
-------
* :mod:`~cnnlab.metrics.hits`: top-k hits and the user class of a prediction;
* :mod:`~cnnlab.metrics.confusion`: confusion matrix and per-class precision/recall;
* :mod:`~cnnlab.metrics.significance`: Wilson intervals and the exact McNemar test;
* :mod:`~cnnlab.metrics.calibration`: mean confidence and expected calibration error;
* :mod:`~cnnlab.metrics.summary`: one model's accuracy summary;
* :mod:`~cnnlab.metrics.comparison`: paired comparisons of models, with a verdict in words.
"""

from __future__ import annotations

from cnnlab.metrics.calibration import DEFAULT_ECE_BINS, expected_calibration_error, mean_confidence
from cnnlab.metrics.comparison import PairwiseComparison, compare_models
from cnnlab.metrics.confusion import (
    ClassMetrics,
    SparseConfusion,
    confusion_matrix,
    per_class_report,
    sparse_confusion,
)
from cnnlab.metrics.hits import ambiguous_outputs, mapped_mask, predicted_user_class, topk_hits
from cnnlab.metrics.significance import McNemarResult, mcnemar_exact, overlapping, wilson_interval
from cnnlab.metrics.summary import AccuracySummary, summarize

__all__ = [
    "DEFAULT_ECE_BINS",
    "AccuracySummary",
    "ClassMetrics",
    "McNemarResult",
    "PairwiseComparison",
    "SparseConfusion",
    "ambiguous_outputs",
    "compare_models",
    "confusion_matrix",
    "expected_calibration_error",
    "mapped_mask",
    "mcnemar_exact",
    "mean_confidence",
    "overlapping",
    "per_class_report",
    "predicted_user_class",
    "sparse_confusion",
    "summarize",
    "topk_hits",
    "wilson_interval",
]
