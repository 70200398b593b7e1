"""Likely wrong labels: confident learning (cleanlab) on out-of-fold probabilities of a linear probe.

A logistic regression on the frozen features (unit length, then standardised) is trained k times, each time without
one fold, and predicts the fold it did not see (scikit-learn's ``cross_val_predict``): every image
gets class probabilities from a model that never saw its label. cleanlab's ``find_label_issues``
decides which labels are wrong from those probabilities (pruning by the estimated noise rates), and
``get_label_quality_scores`` ranks them; the suggested label is the most probable class.

A class with a single image cannot be held out and still be learnt: its image is not checked (and
the caller is told). With fewer than two checkable classes there is nothing to confuse a label with.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass
class MislabelFindings:
    """Per image (rows of the features given): out-of-fold probabilities over *all* classes, the verdict, the score.

    ``checked`` is False for images that could not be checked (their class has one image); their
    probabilities are nan. ``score`` is 1 - cleanlab's label quality (0 where not checked).
    """

    pred_probs: np.ndarray
    checked: np.ndarray
    flagged: np.ndarray
    score: np.ndarray
    suggested: np.ndarray
    notes: list[str] = field(default_factory=list)


def find_mislabels(features: np.ndarray, targets: Sequence[int] | np.ndarray, classes: Sequence[str], *, folds: int = 5,
                   regularization: float = 0.01, seed: int = 0) -> MislabelFindings:
    """Out-of-fold probabilities and cleanlab's verdict for every row of ``features`` (labels ``targets``)."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cnnlab.imagedata.neighbours import normalise

    y = np.asarray(targets, dtype=np.int64)
    n = len(y)
    result = MislabelFindings(
        pred_probs=np.full((n, len(classes)), np.nan), checked=np.zeros(n, bool), flagged=np.zeros(n, bool),
        score=np.zeros(n), suggested=y.copy(),
    )
    counts = Counter(y.tolist())
    singles = sorted(classes[c] for c, m in counts.items() if m < 2)
    if singles:
        result.notes.append(f"{_names(singles)} {'has' if len(singles) == 1 else 'have'} a single image: "
                            "wrong labels cannot be checked there (k-fold needs 2 images per class)")
    usable = sorted(c for c, m in counts.items() if m >= 2)
    if len(usable) < 2:
        result.notes.append("wrong labels need at least two classes with 2 or more images each to compare: "
                            "not checked (duplicates, off-topic and unreadable files still are)")
        return result
    rows = np.flatnonzero(np.isin(y, usable))
    compact = {c: i for i, c in enumerate(usable)}
    labels = np.array([compact[c] for c in y[rows]])
    k = max(2, min(folds, max(counts[c] for c in usable)))
    x = normalise(features[rows])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=regularization, max_iter=1000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "least populated class has fewer members than n_splits": handled above
        probs = cross_val_predict(probe, x, labels, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                                  method="predict_proba")
        issues = find_label_issues(labels, probs, filter_by="prune_by_noise_rate")
        quality = get_label_quality_scores(labels, probs, method="self_confidence")
    full = np.zeros((len(rows), len(classes)))
    full[:, usable] = probs
    result.pred_probs[rows] = full
    result.checked[rows] = True
    result.flagged[rows] = issues
    result.score[rows] = 1.0 - quality
    result.suggested[rows] = np.asarray(usable)[probs.argmax(1)]
    return result


def _names(names: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"class{'es' if len(names) > 1 else ''} {shown}{more}"
