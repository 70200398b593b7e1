"""One model's accuracy on one labelled set: top-k accuracies with intervals, confidence and ECE."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnlab.jsonable import finite_or_none
from cnnlab.metrics._inputs import as_int_array, as_prob_array, ci_to_list, rate
from cnnlab.metrics.calibration import DEFAULT_ECE_BINS, expected_calibration_error, mean_confidence
from cnnlab.metrics.hits import topk_hits
from cnnlab.metrics.significance import wilson_interval


@dataclass(frozen=True)
class AccuracySummary:
    """Accuracy of one model on one labelled set.

    Attributes:
        n: samples scored.
        hits: ``{k: number of top-k hits}`` for each requested ``k``.
        accuracy: ``{k: hits[k] / n}`` (``nan`` when ``n == 0``).
        ci: ``{k: Wilson interval of accuracy[k]}`` at ``confidence_level``.
        confidence_level: the level of the intervals, e.g. 0.95.
        mean_confidence: mean top-1 softmax probability.
        ece: expected calibration error of the top-1 probability against the top-1 hit.
        ece_bins: bins used for ``ece``.
    """

    n: int
    hits: Mapping[int, int]
    accuracy: Mapping[int, float]
    ci: Mapping[int, tuple[float, float]]
    confidence_level: float
    mean_confidence: float
    ece: float
    ece_bins: int = DEFAULT_ECE_BINS

    def _get(self, k: int) -> float:
        if k not in self.accuracy:
            raise KeyError(f"top-{k} accuracy was not computed (ks={tuple(self.accuracy)})")
        return self.accuracy[k]

    @property
    def top1(self) -> float:
        """Top-1 accuracy."""
        return self._get(1)

    @property
    def top5(self) -> float:
        """Top-5 accuracy (KeyError if ``5`` was not among the ``ks``)."""
        return self._get(5)

    def to_dict(self) -> dict[str, Any]:
        """Flat, JSON-ready dict: ``n``, ``top1``, ``top1_hits``, ``top1_ci``, ...; nan -> None."""
        out: dict[str, Any] = {"n": self.n}
        for k in self.accuracy:
            out[f"top{k}"] = finite_or_none(self.accuracy[k])
            out[f"top{k}_hits"] = self.hits[k]
            out[f"top{k}_ci"] = ci_to_list(self.ci[k])
        out["confidence_level"] = self.confidence_level
        out["mean_confidence"] = finite_or_none(self.mean_confidence)
        out["ece"] = finite_or_none(self.ece)
        out["ece_bins"] = self.ece_bins
        return out


def summarize(
    topk: npt.ArrayLike,
    topk_prob: npt.ArrayLike,
    y: npt.ArrayLike,
    accepted: Sequence[Collection[int]],
    ks: Iterable[int] = (1, 5),
    confidence: float = 0.95,
    n_bins: int = DEFAULT_ECE_BINS,
) -> AccuracySummary:
    """Top-k accuracies with Wilson intervals, mean confidence and ECE of one model.

    Args:
        topk: ``(N, K)`` output indices, best first.
        topk_prob: ``(N, K)`` their softmax probabilities; column 0 is the top-1 confidence.
        y: ``(N,)`` user class ids.
        accepted: for each user class, the output indices that count as right.
        ks: the ``k`` values to report; each must be ``<= K``.
        confidence: level of the Wilson intervals.
        n_bins: bins for the ECE.

    Samples of unmapped classes are counted as misses; drop them first with :func:`mapped_mask`.
    """
    topk_arr = as_int_array(topk, "topk", 2)
    prob = as_prob_array(topk_prob, "topk_prob", 2)
    if prob.shape != topk_arr.shape:
        raise ValueError(f"topk_prob shape {prob.shape} differs from topk shape {topk_arr.shape}")
    ks_t = tuple(dict.fromkeys(int(k) for k in ks))  # dedupe, keep order
    if not ks_t:
        raise ValueError("ks must name at least one k")
    n = len(topk_arr)
    hits: dict[int, int] = {}
    accuracy: dict[int, float] = {}
    ci: dict[int, tuple[float, float]] = {}
    for k in ks_t:
        h = int(np.count_nonzero(topk_hits(topk_arr, y, accepted, k)))
        hits[k] = h
        accuracy[k] = rate(h, n)
        ci[k] = wilson_interval(h, n, confidence)
    if n:
        top1_hit = topk_hits(topk_arr, y, accepted, 1)
        top1_conf = prob[:, 0]
    else:
        top1_hit = np.zeros(0, dtype=np.bool_)
        top1_conf = np.zeros(0)
    return AccuracySummary(
        n=n,
        hits=hits,
        accuracy=accuracy,
        ci=ci,
        confidence_level=confidence,
        mean_confidence=mean_confidence(top1_conf),
        ece=expected_calibration_error(top1_conf, top1_hit, n_bins),
        ece_bins=n_bins,
    )
