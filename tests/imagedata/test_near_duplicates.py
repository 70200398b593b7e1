"""The pixel matcher behind near duplicates: batched normalised cross-correlation and the candidate checks."""

from __future__ import annotations

import numpy as np
import pytest

from cnnlab.imagedata import near_duplicates as duplicates
from cnnlab.imagedata.neighbours import nearest_neighbours


def _textured(seed: int, h: int = 40, w: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((h, w)) * 255).astype(np.uint8)


def test_batched_ncc_equals_one_template_at_a_time() -> None:
    target = duplicates._Target(_textured(0).astype(np.float64))
    templates = [_textured(1, 30, 30).astype(np.float64), _textured(0)[5:35, 4:40].astype(np.float64),
                 np.zeros((10, 10)), _textured(2, 60, 60).astype(np.float64), _textured(3, 3, 3).astype(np.float64)]
    many = target.ncc_many(templates)
    one = [target.ncc(t) for t in templates]
    assert many == pytest.approx(one, abs=1e-9)
    assert many[1] == pytest.approx(1.0, abs=1e-6)  # an exact crop
    assert many[2] == many[3] == many[4] == -1.0  # flat, too big, too small


def test_find_duplicates_builds_each_coarse_target_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ``coarse.setdefault(i, _Target(a))`` built a target (two FFTs, two tables) for every pair."""
    built: list[int] = []
    real = duplicates._Target

    class Counting(real):  # type: ignore[misc,valid-type]
        def __init__(self, pixels: np.ndarray) -> None:
            built.append(1)
            super().__init__(pixels)

    monkeypatch.setattr(duplicates, "_Target", Counting)
    n = 12
    thumbs = [_textured(i) for i in range(n)]
    nb = nearest_neighbours(np.ones((n, 8)) + np.eye(n, 8) * 0.01, n - 1)  # every pair is a candidate
    found = duplicates.find_duplicates(nb, thumbs, [1] * n, lambda i: None, threshold=0.93, candidates=n - 1)
    assert found.checked_pairs == n * (n - 1) // 2
    assert len(built) == n  # one per image, not two per pair
