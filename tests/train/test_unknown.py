"""The "none of these" scores and their calibration (cnnlab.train.unknown)."""

from __future__ import annotations

import math

import pytest
import torch

from cnnlab.train.unknown import (
    FALSE_REJECTION,
    SCORES,
    calibrate_unknown,
    feature_scorer,
    score_logits,
    stored_score,
)


def test_every_score_ranks_a_confident_row_above_a_flat_one() -> None:
    logits = torch.tensor([[8.0, 0.0, 0.0], [0.5, 0.4, 0.3]])
    for score in SCORES:
        values = score_logits(logits, score)
        assert values[0] > values[1], score
    assert torch.allclose(score_logits(logits, "max_logit"), torch.tensor([8.0, 0.5]))
    assert torch.allclose(score_logits(logits, "energy"), torch.logsumexp(logits, dim=1))
    with pytest.raises(ValueError, match="max_softmax"):
        score_logits(logits, "entropy")


def test_max_logit_and_energy_see_a_row_that_softmax_cannot() -> None:
    """Softmax is blind to a shift of every logit: a photo far from every class (all logits low) scores as high as
    one near a class. The logit scores are not."""
    near = torch.tensor([[6.0, 2.0, 1.0]])
    far = near - 5.0
    assert torch.allclose(score_logits(near, "max_softmax"), score_logits(far, "max_softmax"))
    for score in ("max_logit", "energy"):
        assert score_logits(near, score) > score_logits(far, score)


def test_calibration_rejects_at_most_the_false_rejection_share_of_validation() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(40, 4, generator=generator) * 3
    for score in SCORES:
        entry = calibrate_unknown(logits, score=score)
        assert entry is not None and entry["score"] == score and entry["n"] == 40
        values = score_logits(logits, score)
        rejected = int((values < entry["threshold"]).sum())
        assert rejected == math.floor(FALSE_REJECTION * 40)  # at most that share, and the highest threshold that does so
    assert calibrate_unknown(torch.zeros(0, 4)) is None


def test_older_entries_without_a_score_are_a_softmax_probability() -> None:
    assert stored_score({"threshold": 0.4}) == "max_softmax"
    assert stored_score({"score": "energy", "threshold": 3.0}) == "energy"
    assert stored_score({"score": "from-the-future", "threshold": 0.4}) == "max_softmax"
    assert calibrate_unknown(torch.tensor([[2.0, 0.0]]))["score"] == "max_softmax"  # type: ignore[index]


def test_feature_scores_are_high_near_the_training_features_and_low_elsewhere() -> None:
    train = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 1.0, 0.0], [0.1, 0.9, 0.0]])
    targets = torch.tensor([0, 0, 1, 1])
    scorer = feature_scorer(train, targets)
    assert scorer.means.shape == (2, 3) and torch.allclose(scorer.means.norm(dim=1), torch.ones(2))
    inside, outside = torch.tensor([[2.0, 0.1, 0.0]]), torch.tensor([[0.0, 0.0, 1.0]])
    assert scorer.class_mean(inside) > 0.9 > scorer.class_mean(outside)
    assert scorer.nearest(inside) > scorer.nearest(outside)
    assert torch.allclose(scorer.nearest(train[:1] * 3), torch.ones(1))  # the length of a feature does not count
    maps = train[:, :, None, None].expand(4, 3, 2, 2)  # (N, C, H, W) features are flattened, not refused
    assert feature_scorer(maps, targets).bank.shape == (4, 12)
