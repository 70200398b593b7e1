""""None of these": the threshold below which a trained model's answer is ``unknown``.

A classifier over the user's classes gives every photo one of them, a pizza included. The score is
the maximum softmax probability (Hendrycks and Gimpel 2017). ``benchmarks/bench_unknown.py`` measures
it against the top logit, the energy (logsumexp of the logits) and feature-space scores
(:class:`FeatureScorer`: cosine similarity to the nearest class mean or nearest training image) on
real photos held out against off-topic ones: none separated them clearly better on every run, so the
score stays the one whose threshold a user can read and override, a probability between 0 and 1. It
is calibrated on the validation images of the final weights: the highest threshold that rejects at
most :data:`FALSE_REJECTION` of them (in-class photos), so that rate holds on photos like them.

The checkpoint stores it as ``ckpt["unknown"]``: ``{"score": "max_softmax", "threshold": t,
"false_rejection": 0.05, "calibrated_on": "val", "n": images}``; ``predict`` marks an image whose
top probability is below ``threshold`` as ``unknown``. ``score`` names how the threshold is read
(:func:`score_logits`, one of :data:`SCORES`); an entry without it (older checkpoints) is a top softmax
probability (:func:`stored_score`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

#: The share of in-class validation images the threshold may reject.
FALSE_REJECTION = 0.05
#: Checkpoint key of the calibrated threshold.
CHECKPOINT_KEY = "unknown"
SCORE = "max_softmax"
#: The scores computed from logits alone (high: in-class): top probability, top logit, logsumexp of the logits.
SCORES = ("max_softmax", "max_logit", "energy")


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The out-of-distribution score of each row: its top softmax probability (low: likely none of the classes)."""
    return logits.float().softmax(dim=1).max(dim=1).values


def score_logits(logits: torch.Tensor, score: str = SCORE) -> torch.Tensor:
    """Score ``score`` (one of :data:`SCORES`) of each row of ``logits``; low: likely none of the classes.

    ``energy`` is the negative free energy, ``logsumexp`` of the logits (Liu et al. 2020), so that high means
    in-class for every score."""
    values = logits.float()
    if score == "max_softmax":
        return max_softmax(values)
    if score == "max_logit":
        return values.max(dim=1).values
    if score == "energy":
        return torch.logsumexp(values, dim=1)
    raise ValueError(f"unknown out-of-distribution score {score!r}; one of {', '.join(SCORES)}")


def stored_score(entry: Mapping[str, Any]) -> str:
    """The score a checkpoint's ``unknown`` entry was calibrated for: checkpoints written before the entry named
    it stored a top softmax probability."""
    score = entry.get("score", SCORE)
    return score if score in SCORES else SCORE


def calibrate_unknown(logits: torch.Tensor, false_rejection: float = FALSE_REJECTION,
                      score: str = SCORE, calibrated_on: str = "val") -> dict[str, Any] | None:
    """The ``unknown`` entry of a checkpoint from the validation logits of its weights (``None`` without any).

    The threshold is the ``floor(false_rejection * n)``-th lowest score (0-based), so at most that share of
    the validation images score below it."""
    if not len(logits):
        return None
    scores = torch.sort(score_logits(logits, score)).values
    k = math.floor(false_rejection * len(scores))
    return {"score": score, "threshold": float(scores[k]), "false_rejection": false_rejection,
            "calibrated_on": calibrated_on, "n": len(scores)}


@dataclass(frozen=True)
class FeatureScorer:
    """Feature-space scores against the training images' penultimate features (high: near the training images)."""

    #: Unit-length mean feature of each class, (classes, dim).
    means: torch.Tensor
    #: Unit-length features of every training image, (images, dim).
    bank: torch.Tensor

    def class_mean(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each row to the nearest class mean."""
        return (_unit(features) @ self.means.T).max(dim=1).values

    def nearest(self, features: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of each row to the nearest training image (k-nearest neighbours with k = 1)."""
        return (_unit(features) @ self.bank.T).max(dim=1).values


def _unit(features: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(features.float().flatten(1), dim=1)


def feature_scorer(features: torch.Tensor, targets: torch.Tensor) -> FeatureScorer:
    """A :class:`FeatureScorer` from the training images' penultimate features and their class indices."""
    bank = _unit(features)
    classes = int(targets.max()) + 1 if len(targets) else 0
    means = torch.stack([bank[targets == c].mean(dim=0) for c in range(classes)]) if classes else bank[:0]
    return FeatureScorer(_unit(means) if classes else means, bank)
