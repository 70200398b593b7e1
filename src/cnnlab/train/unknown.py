""""None of these": the threshold below which a trained model's answer is ``unknown``.

A classifier over the user's classes gives every photo one of them, a pizza included. The score is
the maximum softmax probability (Hendrycks and Gimpel 2017): on a few hundred images it separates
off-topic photos about as well as the energy score (``benchmarks/bench_train.py`` measures both), and a
probability between 0 and 1 is a threshold a user can read and override. It is calibrated on the
validation images of the final weights: the highest threshold that rejects at most
:data:`FALSE_REJECTION` of them (in-class photos), so that rate holds on photos like them.

The checkpoint stores it as ``ckpt["unknown"]``: ``{"score": "max_softmax", "threshold": t,
"false_rejection": 0.05, "calibrated_on": "val", "n": images}``; ``predict`` marks an image whose
top probability is below ``threshold`` as ``unknown``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

#: The share of in-class validation images the threshold may reject.
FALSE_REJECTION = 0.05
#: Checkpoint key of the calibrated threshold.
CHECKPOINT_KEY = "unknown"
SCORE = "max_softmax"


def max_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The out-of-distribution score of each row: its top softmax probability (low: likely none of the classes)."""
    return logits.float().softmax(dim=1).max(dim=1).values


def calibrate_unknown(logits: torch.Tensor, false_rejection: float = FALSE_REJECTION) -> dict[str, Any] | None:
    """The ``unknown`` entry of a checkpoint from the validation logits of its weights (``None`` without any).

    The threshold is the ``floor(false_rejection * n)``-th lowest score (0-based), so at most that share of
    the validation images score below it."""
    if not len(logits):
        return None
    scores = torch.sort(max_softmax(logits)).values
    k = math.floor(false_rejection * len(scores))
    return {"score": SCORE, "threshold": float(scores[k]), "false_rejection": false_rejection,
            "calibrated_on": "val", "n": len(scores)}
