"""Top-k hits against accepted output sets, and the user class a top-1 prediction stands for."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import numpy.typing as npt

from cnnlab.metrics._inputs import (
    BoolArray,
    IntArray,
    accepted_sets,
    as_int_array,
    check_labels,
    check_same_length,
)


def mapped_mask(y: npt.ArrayLike, accepted: Sequence[Collection[int]]) -> BoolArray:
    """Which samples belong to a user class with a non-empty accepted set.

    Use it to drop samples of unmapped classes before scoring: ``keep = mapped_mask(y, acc)``.
    """
    y_arr = as_int_array(y, "y", 1)
    sets = accepted_sets(accepted)
    check_labels(y_arr, len(sets), "y")
    has_outputs = np.array([bool(s) for s in sets], dtype=np.bool_)
    return has_outputs[y_arr] if y_arr.size else np.zeros(0, dtype=np.bool_)


def ambiguous_outputs(accepted: Sequence[Collection[int]]) -> dict[int, tuple[int, ...]]:
    """Output indices accepted by more than one user class, with the classes that accept them.

    A well-formed mapping returns ``{}``. See :func:`predicted_user_class` for what happens to a
    top-1 prediction that falls on such an index.
    """
    owners: dict[int, list[int]] = {}
    for c, s in enumerate(accepted_sets(accepted)):
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
    topk_arr = as_int_array(topk, "topk", 2)
    y_arr = as_int_array(y, "y", 1)
    n = check_same_length(topk=topk_arr, y=y_arr)
    sets = accepted_sets(accepted)
    check_labels(y_arr, len(sets), "y")
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
    return np.asarray(table[y_arr[:, None], cols].any(axis=1), dtype=np.bool_)


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
    top1_arr = as_int_array(top1, "top1", 1)
    sets = accepted_sets(accepted)
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
