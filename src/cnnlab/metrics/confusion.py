"""Confusion matrix of user classes (with an "other" column) and per-class precision and recall."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnlab.jsonable import finite_or_none
from cnnlab.metrics._inputs import IntArray, as_int_array, check_labels, check_same_length, rate


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
    y_arr = as_int_array(y, "y", 1)
    p_arr = as_int_array(y_pred, "y_pred", 1)
    check_same_length(y=y_arr, y_pred=p_arr)
    check_labels(y_arr, n_classes, "y")
    check_labels(p_arr, n_classes, "y_pred", allow_other=True)
    m = np.zeros((n_classes, n_classes + 1), dtype=np.intp)
    np.add.at(m, (y_arr, p_arr), 1)
    return m


@dataclass(frozen=True)
class SparseConfusion:
    """A confusion matrix kept as its non-zero cells: memory linear in the samples' distinct (true, predicted)
    pairs, never C x C. ``predicted == n_classes`` is the "other" column."""

    n_classes: int
    true: IntArray
    predicted: IntArray
    count: IntArray

    def dense(self) -> IntArray:
        """The ``(C, C + 1)`` matrix of :func:`confusion_matrix` (for small C: it is C x C)."""
        m = np.zeros((self.n_classes, self.n_classes + 1), dtype=np.intp)
        m[self.true, self.predicted] = self.count
        return m

    def most_confused(self, n: int = 20) -> list[tuple[int, int, int]]:
        """The ``n`` largest off-diagonal cells as ``(true, predicted, count)``, largest first."""
        off = np.flatnonzero(self.true != self.predicted)
        order = off[np.lexsort((self.predicted[off], self.true[off], -self.count[off]))][:n]
        return [(int(self.true[i]), int(self.predicted[i]), int(self.count[i])) for i in order]


def sparse_confusion(y: npt.ArrayLike, y_pred: npt.ArrayLike, n_classes: int) -> SparseConfusion:
    """The non-zero cells of :func:`confusion_matrix`, sorted by (true, predicted)."""
    y_arr = as_int_array(y, "y", 1)
    p_arr = as_int_array(y_pred, "y_pred", 1)
    check_same_length(y=y_arr, y_pred=p_arr)
    check_labels(y_arr, n_classes, "y")
    check_labels(p_arr, n_classes, "y_pred", allow_other=True)
    cells, count = np.unique(y_arr * (n_classes + 1) + p_arr, return_counts=True)
    return SparseConfusion(n_classes, cells // (n_classes + 1), cells % (n_classes + 1), count.astype(np.intp))


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
            "accuracy": finite_or_none(self.accuracy),
            "precision": finite_or_none(self.precision),
            "recall": finite_or_none(self.recall),
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
    y_arr = as_int_array(y, "y", 1)
    p_arr = as_int_array(y_pred, "y_pred", 1)
    check_same_length(y=y_arr, y_pred=p_arr)
    check_labels(y_arr, n_classes, "y")
    check_labels(p_arr, n_classes, "y_pred", allow_other=True)
    # counts per class, linear in the number of classes (no C x C matrix)
    support = np.bincount(y_arr, minlength=n_classes)
    predicted = np.bincount(p_arr[p_arr < n_classes], minlength=n_classes)
    hits = np.bincount(y_arr[y_arr == p_arr], minlength=n_classes)
    report = []
    for c, name in enumerate(class_names):
        correct = int(hits[c])
        recall = rate(correct, int(support[c]))
        report.append(
            ClassMetrics(
                name=str(name),
                support=int(support[c]),
                correct=correct,
                predicted=int(predicted[c]),
                accuracy=recall,
                precision=rate(correct, int(predicted[c])),
                recall=recall,
            )
        )
    return report
