"""Input checks and small helpers shared by the metric modules (not part of the public API)."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from cnnlab.jsonable import finite_or_none

BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]
FloatArray = npt.NDArray[np.float64]


def as_int_array(x: Any, name: str, ndim: int) -> IntArray:
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


def as_bool_array(x: Any, name: str) -> BoolArray:
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


def as_prob_array(x: Any, name: str, ndim: int) -> FloatArray:
    """``x`` as a float array of values in [0, 1]."""
    arr = np.asarray(x, dtype=np.float64)
    if ndim == 2 and arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, 0)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}")
    if arr.size and not ((arr >= 0.0) & (arr <= 1.0)).all():  # also rejects nan
        raise ValueError(f"{name} must lie in [0, 1] (and not be nan)")
    return arr


def check_same_length(**arrays: np.ndarray) -> int:
    """The common length of ``arrays``; a ValueError naming each length when they differ."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ValueError(f"inputs must have one entry per sample: {detail}")
    return next(iter(lengths.values()))


def check_labels(y: IntArray, n_classes: int, name: str, *, allow_other: bool = False) -> None:
    """A ValueError if ``y`` holds an id outside ``0..C-1`` (``0..C`` with ``allow_other``)."""
    top = n_classes + 1 if allow_other else n_classes
    if y.size and (y.min() < 0 or y.max() >= top):
        bad = y[(y < 0) | (y >= top)][0]
        allowed = f"0..{top - 1}" if top > 0 else "nothing (there are no classes)"
        raise ValueError(f"{name} holds {bad}, outside the allowed range {allowed}")


def accepted_sets(accepted: Sequence[Collection[int]]) -> list[frozenset[int]]:
    """``accepted`` as frozensets of ints; a ValueError on a negative output index."""
    sets = []
    for c, outputs in enumerate(accepted):
        s = frozenset(int(o) for o in outputs)
        if any(o < 0 for o in s):
            raise ValueError(f"accepted[{c}] holds a negative output index")
        sets.append(s)
    return sets


def ci_to_list(ci: tuple[float, float]) -> list[float | None]:
    """An interval as a JSON-ready list; nan bounds become ``None``."""
    return [finite_or_none(ci[0]), finite_or_none(ci[1])]


def rate(numerator: int, denominator: int) -> float:
    """``numerator / denominator``, or ``nan`` for an empty set."""
    return numerator / denominator if denominator else math.nan
