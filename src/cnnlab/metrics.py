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
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "AccuracySummary",
    "ClassMetrics",
    "McNemarResult",
    "PairwiseComparison",
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
    "summarize",
    "topk_hits",
    "wilson_interval",
]

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]

#: Number of equal-width bins that :func:`expected_calibration_error` uses by default
#: (the value of Guo et al., 2017, "On Calibration of Modern Neural Networks").
DEFAULT_ECE_BINS: Final[int] = 15


# --------------------------------------------------------------------------------------------
# input checks
# --------------------------------------------------------------------------------------------


def _as_int_array(x: Any, name: str, ndim: int) -> IntArray:
    """``x`` as an integer array with ``ndim`` dimensions (an empty list is fine)."""
    arr = np.asarray(x)
    if arr.size == 0 and arr.dtype.kind not in "iu":
        arr = arr.astype(np.intp)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
    if ndim == 2 and arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    return arr.astype(np.intp, copy=False)


def _as_bool_array(x: Any, name: str) -> BoolArray:
    """``x`` as a 1-D boolean array; integer arrays of 0 and 1 are accepted too."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size == 0:
        return arr.astype(np.bool_)
    if arr.dtype.kind in "iu" and np.isin(arr, (0, 1)).all():
        return arr.astype(np.bool_)
    raise TypeError(f"{name} must be booleans (or 0/1 integers), got dtype {arr.dtype}")


def _as_prob_array(x: Any, name: str, ndim: int) -> FloatArray:
    """``x`` as a float array of values in [0, 1]."""
    arr = np.asarray(x, dtype=np.float64)
    if ndim == 2 and arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and not ((arr >= 0.0) & (arr <= 1.0)).all():  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1] (and not be nan)")
    return arr


def _check_same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have one entry per sample: {detail}")
    return next(iter(lengths.values()))


def _check_labels(y: IntArray, n_classes: int, name: str, *, allow_other: bool = False) -> None:
    top = n_classes + 1 if allow_other else n_classes
    if y.size and (y.min() < 0 or y.max() >= top):
        bad = y[(y < 0) | (y >= top)][0]
        allowed = f"0..{top - 1}" if top > 0 else "nothing (there are no classes)"
        raise ValueError(f"{name} holds {bad}, outside the allowed range {allowed}")


def _accepted_sets(accepted: Sequence[Collection[int]]) -> list[frozenset[int]]:
    sets = []
    for c, outputs in enumerate(accepted):
        s = frozenset(int(o) for o in outputs)
        if any(o < 0 for o in s):
            raise ValueError(f"accepted[{c}] holds a negative output index")
        sets.append(s)
    return sets


def _nan_to_none(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _ci_to_list(ci: tuple[float, float]) -> list[float | None]:
    return [_nan_to_none(ci[0]), _nan_to_none(ci[1])]


def _rate(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else math.nan


# --------------------------------------------------------------------------------------------
# hits and predicted classes
# --------------------------------------------------------------------------------------------


def mapped_mask(y: npt.ArrayLike, accepted: Sequence[Collection[int]]) -> BoolArray:
    """Which samples belong to a user class with a non-empty accepted set.

    Use it to drop samples of unmapped classes before scoring: ``keep = mapped_mask(y, acc)``.
    """
    y_arr = _as_int_array(y, "y", 1)
    sets = _accepted_sets(accepted)
    _check_labels(y_arr, len(sets), "y")
    has_outputs = np.array([bool(s) for s in sets], dtype=np.bool_)
    return has_outputs[y_arr] if y_arr.size else np.zeros(0, dtype=np.bool_)


def ambiguous_outputs(accepted: Sequence[Collection[int]]) -> dict[int, tuple[int, ...]]:
    """Output indices accepted by more than one user class, with the classes that accept them.

    A well-formed mapping returns ``{}``. See :func:`predicted_user_class` for what happens to a
    top-1 prediction that falls on such an index.
    """
    owners: dict[int, list[int]] = {}
    for c, s in enumerate(_accepted_sets(accepted)):
        for o in s:
            owners.setdefault(o, []).append(c)
    return {o: tuple(cs) for o, cs in sorted(owners.items()) if len(cs) > 1}


def topk_hits(
    topk: npt.ArrayLike,
    y: npt.ArrayLike,
    accepted: Sequence[Collection[int]],
    k: int,
) -> BoolArray:
    """Per-sample top-``k`` hits: is any of the first ``k`` predictions accepted for ``y[i]``?

    Args:
        topk: ``(N, K)`` integer output indices, best first.
        y: ``(N,)`` user class ids in ``0..C-1`` with ``C = len(accepted)``.
        accepted: for each user class, the model output indices that count as right.
        k: how many predictions to look at, ``1 <= k <= K``.

    Returns:
        ``(N,)`` boolean array. Samples of an unmapped class (empty accepted set) are ``False``.

    Raises:
        ValueError: on a shape mismatch, ``k`` out of range, a label outside ``0..C-1`` or a
            negative output index.
    """
    topk_arr = _as_int_array(topk, "topk", 2)
    y_arr = _as_int_array(y, "y", 1)
    n = _check_same_length(topk=topk_arr, y=y_arr)
    sets = _accepted_sets(accepted)
    _check_labels(y_arr, len(sets), "y")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {k!r}")
    n_pred = topk_arr.shape[1]
    if n == 0 and k >= 1:  # nothing to score; an empty list has no column count to check
        return np.zeros(0, dtype=np.bool_)
    if not 1 <= k <= n_pred:
        raise ValueError(f"k must be between 1 and the {n_pred} predictions per sample, got {k}")
    first = topk_arr[:, :k]
    if first.min() < 0:
        raise ValueError("topk holds a negative output index")

    # Dense (C, width) membership table; indices beyond every accepted set are never hits.
    width = max((max(s) for s in sets if s), default=-1) + 1
    table = np.zeros((len(sets), width + 1), dtype=np.bool_)  # last column: "beyond"
    for c, s in enumerate(sets):
        if s:
            table[c, list(s)] = True
    cols = np.minimum(first, width)
    return table[y_arr[:, None], cols].any(axis=1)


def predicted_user_class(
    top1: npt.ArrayLike,
    accepted: Sequence[Collection[int]],
    other: int | None = None,
) -> IntArray:
    """Map each top-1 output index to the user class that accepts it.

    Args:
        top1: ``(N,)`` integer output indices (the first column of ``topk``).
        accepted: for each user class, the model output indices that count as right.
        other: the id to give a prediction that belongs to no user class; defaults to
            ``C = len(accepted)``, the "other" column of :func:`confusion_matrix`. It must not be
            a real class id.

    Returns:
        ``(N,)`` integer array of user class ids or ``other``.

    Ties: an output index accepted by **more than one** user class is ambiguous and is mapped to
    ``other``, never to one of the claimants, so a confusion matrix never credits a class on a
    coin toss. :func:`topk_hits` on the other hand counts such a prediction as a hit for every
    class that accepts it, so with overlapping sets the diagonal of the confusion matrix can be
    lower than the top-1 hits. Check with :func:`ambiguous_outputs` that the mapping has none.
    """
    if np.ndim(top1) == 2:
        raise ValueError("top1 must be 1-D; pass topk[:, 0]")
    top1_arr = _as_int_array(top1, "top1", 1)
    sets = _accepted_sets(accepted)
    n_classes = len(sets)
    if other is None:
        other = n_classes
    if 0 <= other < n_classes:
        raise ValueError(f"other={other} is a real class id; use {n_classes} or a negative id")
    if top1_arr.size and top1_arr.min() < 0:
        raise ValueError("top1 holds a negative output index")

    width = max((max(s) for s in sets if s), default=-1) + 1
    owner = np.full(width + 1, other, dtype=np.intp)  # last slot: beyond every accepted set
    claims = np.zeros(width + 1, dtype=np.intp)
    for c, s in enumerate(sets):
        if s:
            idx = list(s)
            owner[idx] = c
            claims[idx] += 1
    owner[claims > 1] = other
    return owner[np.minimum(top1_arr, width)]


# --------------------------------------------------------------------------------------------
# confusion matrix and per-class report
# --------------------------------------------------------------------------------------------


def confusion_matrix(y: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> IntArray:
    """Counts of (true user class, predicted user class), with an "other" column.

    Args:
        y: ``(N,)`` true user class ids in ``0..C-1``.
        y_pred: ``(N,)`` predicted ids in ``0..C``, where ``C`` means "other" (see
            :func:`predicted_user_class`).
        n_classes: ``C``.

    Returns:
        ``(C, C + 1)`` integer matrix; ``m[t, p]`` is the number of samples of class ``t``
        predicted as ``p``; column ``C`` counts predictions outside every user class.
    """
    if n_classes < 0:
        raise ValueError(f"n_classes must be >= 0, got {n_classes}")
    y_arr = _as_int_array(y, "y", 1)
    p_arr = _as_int_array(y_pred, "y_pred", 1)
    _check_same_length(y=y_arr, y_pred=p_arr)
    _check_labels(y_arr, n_classes, "y")
    _check_labels(p_arr, n_classes, "y_pred", allow_other=True)
    m = np.zeros((n_classes, n_classes + 1), dtype=np.intp)
    np.add.at(m, (y_arr, p_arr), 1)
    return m


@dataclass(frozen=True)
class ClassMetrics:
    """Scores of one user class.

    Attributes:
        name: the class name.
        support: samples whose true class this is.
        correct: of those, how many were predicted as this class.
        predicted: samples (of any true class) predicted as this class.
        accuracy: ``correct / support``, the same as ``recall``; ``nan`` when ``support == 0``.
        precision: ``correct / predicted``; ``nan`` when the class was never predicted.
        recall: ``correct / support``; ``nan`` when ``support == 0``.
    """

    name: str
    support: int
    correct: int
    predicted: int
    accuracy: float
    precision: float
    recall: float

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict; ``nan`` becomes ``None``."""
        return {
            "name": self.name,
            "support": self.support,
            "correct": self.correct,
            "predicted": self.predicted,
            "accuracy": _nan_to_none(self.accuracy),
            "precision": _nan_to_none(self.precision),
            "recall": _nan_to_none(self.recall),
        }


def per_class_report(
    y: npt.ArrayLike, y_pred: npt.ArrayLike, class_names: Sequence[str]
) -> list[ClassMetrics]:
    """One :class:`ClassMetrics` per user class, in class id order.

    Args:
        y: ``(N,)`` true user class ids in ``0..C-1`` with ``C = len(class_names)``.
        y_pred: ``(N,)`` predicted ids in ``0..C`` (``C`` = "other").
        class_names: the name of each user class.
    """
    n_classes = len(class_names)
    m = confusion_matrix(y, y_pred, n_classes)
    support = m.sum(axis=1)
    predicted = m[:, :n_classes].sum(axis=0)
    report = []
    for c, name in enumerate(class_names):
        correct = int(m[c, c])
        recall = _rate(correct, int(support[c]))
        report.append(
            ClassMetrics(
                name=str(name),
                support=int(support[c]),
                correct=correct,
                predicted=int(predicted[c]),
                accuracy=recall,
                precision=_rate(correct, int(predicted[c])),
                recall=recall,
            )
        )
    return report


# --------------------------------------------------------------------------------------------
# confidence intervals and significance
# --------------------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Better behaved than the normal ("Wald") interval for small ``n`` and for proportions near 0
    or 1, and never leaves [0, 1]. ``n == 0`` gives ``(nan, nan)``.

    Example: 39 of 50 right at 95% gives about ``(0.648, 0.872)``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    z2n = z * z / n
    denom = 1.0 + z2n
    centre = (p + z2n / 2.0) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two classifiers scored on the same samples.

    Attributes:
        b: samples that A got right and B got wrong.
        c: samples that A got wrong and B got right.
        n: paired samples in all.
        p_value: two-sided exact binomial p-value of ``b`` out of ``b + c`` at 1/2
            (1.0 when ``b + c == 0``: the classifiers never disagree).
    """

    b: int
    c: int
    n: int
    p_value: float

    @property
    def discordant(self) -> int:
        """Samples on which exactly one of the two classifiers is right (``b + c``)."""
        return self.b + self.c

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the difference is significant at level ``alpha`` (``p_value < alpha``)."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict."""
        return {"b": self.b, "c": self.c, "n": self.n, "p_value": self.p_value}


def mcnemar_exact(correct_a: npt.ArrayLike, correct_b: npt.ArrayLike) -> McNemarResult:
    """Exact (binomial) McNemar test on paired per-sample correctness of models A and B.

    Only the samples where the two disagree carry information: under the null hypothesis of
    equal accuracy each of them is A's win or B's win with probability 1/2.
    """
    a = _as_bool_array(correct_a, "correct_a")
    b_arr = _as_bool_array(correct_b, "correct_b")
    n = _check_same_length(correct_a=a, correct_b=b_arr)
    b = int(np.count_nonzero(a & ~b_arr))
    c = int(np.count_nonzero(~a & b_arr))
    if b + c == 0:
        p = 1.0
    else:
        p = float(min(1.0, stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))
    return McNemarResult(b=b, c=c, n=n, p_value=p)


def overlapping(ci_a: tuple[float, float], ci_b: tuple[float, float]) -> bool:
    """Whether two closed intervals ``(low, high)`` share at least one point.

    Overlapping confidence intervals do **not** prove that two paired accuracies are equal, nor
    does a gap prove a difference at the same level: use :func:`mcnemar_exact` for that.

    Raises:
        ValueError: if a bound is nan (e.g. the interval of an empty set) or ``low > high``.
    """
    for name, (low, high) in (("ci_a", ci_a), ("ci_b", ci_b)):
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"{name} has a nan bound; there is no interval to compare")
        if low > high:
            raise ValueError(f"{name} has low > high: {(low, high)}")
    return ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]


# --------------------------------------------------------------------------------------------
# calibration
# --------------------------------------------------------------------------------------------


def mean_confidence(confidence: npt.ArrayLike) -> float:
    """Mean of the per-sample confidences (e.g. top-1 softmax probability); ``nan`` if empty."""
    conf = _as_prob_array(confidence, "confidence", 1)
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
    conf = _as_prob_array(confidence, "confidence", 1)
    hit = _as_bool_array(correct, "correct")
    n = _check_same_length(confidence=conf, correct=hit)
    if n == 0:
        return math.nan
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], conf, side="left")  # (lo, hi], 0 -> bin 0
    count = np.bincount(bins, minlength=n_bins)
    conf_sum = np.bincount(bins, weights=conf, minlength=n_bins)
    hit_sum = np.bincount(bins, weights=hit.astype(np.float64), minlength=n_bins)
    # sum_b (n_b/N) |hit_sum_b/n_b - conf_sum_b/n_b| == sum_b |hit_sum_b - conf_sum_b| / N
    return float(np.abs(hit_sum - conf_sum)[count > 0].sum() / n)


# --------------------------------------------------------------------------------------------
# one model's summary
# --------------------------------------------------------------------------------------------


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
            out[f"top{k}"] = _nan_to_none(self.accuracy[k])
            out[f"top{k}_hits"] = self.hits[k]
            out[f"top{k}_ci"] = _ci_to_list(self.ci[k])
        out["confidence_level"] = self.confidence_level
        out["mean_confidence"] = _nan_to_none(self.mean_confidence)
        out["ece"] = _nan_to_none(self.ece)
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
    topk_arr = _as_int_array(topk, "topk", 2)
    prob = _as_prob_array(topk_prob, "topk_prob", 2)
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
        accuracy[k] = _rate(h, n)
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


# --------------------------------------------------------------------------------------------
# comparing models
# --------------------------------------------------------------------------------------------


def _format_p(p: float) -> str:
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.2g}"


def _format_level(alpha: float) -> str:
    return f"{alpha * 100:g}%"


@dataclass(frozen=True)
class PairwiseComparison:
    """Paired comparison of two models on the same samples.

    Attributes:
        model_a, model_b: the names.
        n: paired samples.
        hits_a, hits_b: hits of each model.
        ci_a, ci_b: Wilson intervals of their accuracies.
        cis_overlap: whether those intervals overlap (descriptive only; the test is McNemar).
        mcnemar: the exact McNemar test, ``b`` = A-only hits, ``c`` = B-only hits.
        alpha: the significance level of ``verdict``.
        verdict: one plain-English line, e.g. ``"resnet50 vs alexnet: 39 vs 36 of 50 top-1 hits;
            McNemar exact p=0.45 — not a significant difference at 5%"``.
    """

    model_a: str
    model_b: str
    n: int
    hits_a: int
    hits_b: int
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    cis_overlap: bool
    mcnemar: McNemarResult
    alpha: float
    verdict: str

    @property
    def significant(self) -> bool:
        """Whether McNemar finds a difference at ``alpha``."""
        return self.mcnemar.significant(self.alpha)

    @property
    def better(self) -> str | None:
        """The model with more hits when the difference is significant, else ``None``."""
        if not self.significant:
            return None
        return self.model_a if self.hits_a > self.hits_b else self.model_b

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "n": self.n,
            "hits_a": self.hits_a,
            "hits_b": self.hits_b,
            "ci_a": _ci_to_list(self.ci_a),
            "ci_b": _ci_to_list(self.ci_b),
            "cis_overlap": self.cis_overlap,
            "mcnemar": self.mcnemar.to_dict(),
            "alpha": self.alpha,
            "significant": self.significant,
            "better": self.better,
            "verdict": self.verdict,
        }


def compare_models(
    hits_by_model: Mapping[str, npt.ArrayLike],
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    what: str = "top-1 hits",
) -> list[PairwiseComparison]:
    """Compare every pair of models on the same samples, in the mapping's order.

    Args:
        hits_by_model: ``{model name: (N,) per-sample hits}``, the same samples in the same order
            for every model (e.g. from :func:`topk_hits` with ``k=1``).
        alpha: significance level of the McNemar test.
        confidence: level of the Wilson intervals.
        what: what the hits are, for the verdict text.

    Returns:
        One :class:`PairwiseComparison` per unordered pair ``(a, b)`` with ``a`` listed first.
        With ``N == 0`` the intervals are nan and ``cis_overlap`` is ``False``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arrays = {
        name: _as_bool_array(h, f"hits_by_model[{name!r}]") for name, h in hits_by_model.items()
    }
    if arrays:
        _check_same_length(**{f"hits_by_model[{name!r}]": a for name, a in arrays.items()})
    out = []
    for (name_a, a), (name_b, b) in combinations(arrays.items(), 2):
        n = len(a)
        hits_a, hits_b = int(a.sum()), int(b.sum())
        ci_a, ci_b = wilson_interval(hits_a, n, confidence), wilson_interval(hits_b, n, confidence)
        test = mcnemar_exact(a, b)
        significant = test.significant(alpha)
        level = _format_level(alpha)
        if significant:
            winner = name_a if hits_a > hits_b else name_b
            conclusion = f"significant difference at {level} ({winner} is better)"
        elif test.discordant == 0:
            conclusion = f"not a significant difference at {level} (the two never disagree)"
        else:
            conclusion = f"not a significant difference at {level}"
        verdict = (
            f"{name_a} vs {name_b}: {hits_a} vs {hits_b} of {n} {what}; "
            f"McNemar exact {_format_p(test.p_value)} — {conclusion}"
        )
        out.append(
            PairwiseComparison(
                model_a=name_a,
                model_b=name_b,
                n=n,
                hits_a=hits_a,
                hits_b=hits_b,
                ci_a=ci_a,
                ci_b=ci_b,
                cis_overlap=bool(n) and overlapping(ci_a, ci_b),
                mcnemar=test,
                alpha=alpha,
                verdict=verdict,
            )
        )
    return out
