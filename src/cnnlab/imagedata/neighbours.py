"""Nearest neighbours by cosine similarity of features, computed in blocks so memory stays flat.

One pass over the (n x n) similarities, ``block`` rows at a time, gives every image's ``k`` most
similar other images: the off-topic scores, the near-duplicate candidates and the report's evidence
come from these lists. Memory: ``block x n`` floats at a time, plus ``n x k`` for the lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Neighbours:
    """``index[i]``: the ``k`` images most similar to image ``i`` (most similar first), ``similarity[i]`` theirs."""

    index: np.ndarray
    similarity: np.ndarray


def normalise(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_neighbours(features: np.ndarray, k: int, *, block: int = 1024) -> Neighbours:
    """The ``k`` nearest other rows of every row of ``features`` by cosine similarity (fewer if there are fewer rows)."""
    x = normalise(features)
    n = len(x)
    k = max(0, min(k, n - 1))
    index = np.zeros((n, k), dtype=np.int64)
    similarity = np.zeros((n, k), dtype=np.float32)
    if k == 0:
        return Neighbours(index, similarity)
    for start in range(0, n, block):
        stop = min(start + block, n)
        sims = x[start:stop] @ x.T
        rows = np.arange(stop - start)
        sims[rows, rows + start] = -np.inf  # an image is not its own neighbour
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.lexsort((part, -part_sims), axis=1)  # most similar first; ties by index
        index[start:stop] = np.take_along_axis(part, order, axis=1)
        similarity[start:stop] = np.take_along_axis(part_sims, order, axis=1)
    return Neighbours(index, similarity)
