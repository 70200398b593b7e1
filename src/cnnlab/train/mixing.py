"""Weight-space mixing of the probe and the fine-tuned network (WiSE-FT, Wortsman et al. 2022).

On a few dozen images per class the validation split is too small to tell a fine-tuned network that
is a little worse than the linear probe from one that is better, so choosing between them per epoch
can land below the probe. The probe and the fine-tuned weights lie in one basin (the network starts
from the probe), and the straight line between them holds networks that are often better than both
ends. So the run ends by scoring a few points on that line on the validation images and keeping the
best: the probe itself (``0``) and the fine-tuned network (``1``) are among them, so the choice is
never worse on validation than either, and the middle points hedge between them where validation
cannot tell (``benchmarks/bench_train.py`` measures the effect held out).

Only floating-point entries are mixed; integer buffers (BatchNorm's batch counters) are the tuned ones.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light to import: cnnlab.train.result (no torch) takes MixScore and MIX_RULE from here
    import torch

#: Shares of the fine-tuned weights scored on validation (0: the probe, 1: the fine-tuned network).
MIX_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)
#: How the mix (and the best epoch) is chosen, as the run summary states it.
MIX_RULE = ("the highest validation accuracy, ties to the lower validation loss, then to the share nearer 0.5; "
            f"shares of the fine-tuned weights tried: {', '.join(f'{a:g}' for a in MIX_GRID)}")


@dataclass(frozen=True)
class MixScore:
    """Validation figures of one point on the line from the probe to the fine-tuned weights."""

    share: float
    accuracy: float
    loss: float

    def to_dict(self) -> dict[str, float]:
        return {"share": self.share, "val_acc": self.accuracy, "val_loss": self.loss}


def interpolate(probe: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                share: float) -> dict[str, torch.Tensor]:
    """``(1 - share) * probe + share * tuned`` for floating-point entries; the tuned value for the others."""
    import torch

    mixed: dict[str, torch.Tensor] = {}
    for name, value in tuned.items():
        start = probe.get(name)
        if start is None or not value.is_floating_point() or start.shape != value.shape:
            mixed[name] = value
        else:
            mixed[name] = torch.lerp(start.to(value), value, share)
    return mixed


def rank_key(accuracy: float, loss: float, share: float = 0.5) -> tuple[float, float, float]:
    """Sort key of a candidate, best first: accuracy high, loss low, share near 0.5 (nan counts as worst)."""
    acc = accuracy if math.isfinite(accuracy) else -1.0
    lss = loss if math.isfinite(loss) else math.inf
    return (-acc, lss, abs(share - 0.5))


def choose_mix(scores: Sequence[MixScore]) -> MixScore:
    """The best of ``scores`` by :data:`MIX_RULE`."""
    if not scores:
        raise ValueError("no mix was scored")
    return min(scores, key=lambda s: rank_key(s.accuracy, s.loss, s.share))


def score_mixes(probe: Mapping[str, torch.Tensor], tuned: Mapping[str, torch.Tensor],
                validate: Callable[[dict[str, torch.Tensor]], tuple[float, float]],
                grid: Sequence[float] = MIX_GRID, *,
                known: Mapping[float, tuple[float, float]] | None = None) -> list[MixScore]:
    """``validate(weights) -> (accuracy, loss)`` at each share of ``grid``; a share in ``known`` (the run validated
    the probe and the best epoch already: shares 0 and 1, which :func:`interpolate` gives exactly) is not
    validated again."""
    known = known or {}
    scores = []
    for share in grid:
        accuracy, loss = known[share] if share in known else validate(interpolate(probe, tuned, share))
        scores.append(MixScore(share, accuracy, loss))
    return scores
