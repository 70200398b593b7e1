"""The user's classes as a model sees them: which outputs count as each class, and each class's probability.

Shared by the worker (which records, per image, the user class of the top-1 output and the mass the
model puts on it) and by scoring. Light: torch only where a batch is processed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def accepted_sets(source: str, categories: Sequence[str], class_names: Sequence[str],
                  imagenet_accepted: Sequence[Sequence[int]]) -> list[set[int]]:
    """For each user class, the model outputs that count as right: the label mapping for ImageNet
    models, the class of the same name for a model fine-tuned by ``cnnlab train`` (``source``
    ``"checkpoint"``)."""
    if source == "checkpoint":
        index = {name: i for i, name in enumerate(categories)}
        return [{index[c]} if c in index else set() for c in class_names]
    return [set(a) for a in imagenet_accepted]


class UserClasses:
    """Which user class each model output belongs to, and the probability mass of each user class."""

    def __init__(self, accepted: list[set[int]], num_outputs: int) -> None:
        import torch

        self.membership = torch.zeros(num_outputs, max(len(accepted), 1))
        claims = torch.zeros(num_outputs, dtype=torch.int64)
        for c, outputs in enumerate(accepted):
            valid = [o for o in outputs if 0 <= o < num_outputs]
            self.membership[valid, c] = 1.0
            claims[valid] += 1
        self.owner = torch.full((num_outputs,), -1, dtype=torch.int64)
        for c, outputs in enumerate(accepted):
            for o in outputs:
                if 0 <= o < num_outputs and claims[o] == 1:
                    self.owner[o] = c
        self.union = (claims > 0).float()

    def predicted(self, probs: torch.Tensor, top1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The user class of each top-1 output (-1: none or several) and the mass the model puts on it."""
        import torch

        pred = self.owner[top1]
        mass = (probs @ self.membership).gather(1, pred.clamp(min=0)[:, None])[:, 0]
        other = 1.0 - probs @ self.union
        return pred, torch.where(pred >= 0, mass, other)
