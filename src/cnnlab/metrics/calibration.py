"""Calibration: mean confidence and expected calibration error (ECE)."""

from __future__ import annotations

import math
from typing import Final

import numpy as np
import numpy.typing as npt

from cnnlab.metrics._inputs import as_bool_array, as_prob_array, check_same_length

#: Number of equal-width bins that :func:`expected_calibration_error` uses by default
#: (the value of Guo et al., 2017, "On Calibration of Modern Neural Networks").
DEFAULT_ECE_BINS: Final[int] = 15


def mean_confidence(confidence: npt.ArrayLike) -> float:
    """Mean of the per-sample confidences (e.g. top-1 softmax probability); ``nan`` if empty."""
    conf = as_prob_array(confidence, "confidence", 1)
    return float(conf.mean()) if conf.size else math.nan


def expected_calibration_error(
    confidence: npt.ArrayLike, correct: npt.ArrayLike, n_bins: int = DEFAULT_ECE_BINS
) -> float:
    """Expected calibration error with equal-width confidence bins.

    ``ECE = sum_b (n_b / N) * |accuracy_b - mean_confidence_b|`` over ``n_bins`` bins splitting
    [0, 1] into equal widths; bin ``b`` holds confidences in ``(b/n_bins, (b+1)/n_bins]``, with 0
    going to the first bin. Empty bins contribute nothing. A model whose 80%-confident predictions
    are right 80% of the time has ECE 0; ``nan`` when there are no samples.

    Args:
        confidence: ``(N,)`` confidence of each prediction in [0, 1] (top-1 probability).
        correct: ``(N,)`` whether that prediction was right.
        n_bins: number of bins, >= 1.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an int >= 1, got {n_bins!r}")
    conf = as_prob_array(confidence, "confidence", 1)
    hit = as_bool_array(correct, "correct")
    n = check_same_length(confidence=conf, correct=hit)
    if n == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")  # (lo, hi], 0 -> bin 0
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hit.astype(np.float64), minlength=n_bins)
    # sum_b (n_b/N) |hit_sum_b/n_b - conf_sum_b/n_b| == sum_b |hit_sum_b - conf_sum_b| / N
    return float(np.abs(hit_sum - conf_sum)[count > 0].sum() / n)
