"""Outputs a model may give: finite numbers only.

A graph or checkpoint with a NaN or an infinite weight (hand-edited, damaged, or trained with a learning rate
that diverged) gives NaN or infinite logits; softmax turns them into NaN probabilities, and every later step
(top-k, accuracy, a predicted class) silently works on garbage. :func:`require_finite` makes such outputs an
error of that model where they appear (:func:`cnnlab.runtime.inference.run_inference`), so bench reports an
error row and predict a clear error, never ``nan`` with exit 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import WeightsIntegrityError

if TYPE_CHECKING:
    import numpy as np
    import torch

#: Images named in the message (the count is complete).
EXAMPLES = 3


class NonFiniteOutputError(WeightsIntegrityError):
    """A model gave NaN or infinite outputs: its weights or graph are broken (exit 3, like other broken models)."""


def require_finite(logits: torch.Tensor | np.ndarray, model: str, paths: Sequence[str | Path] = ()) -> None:
    """Raise :class:`NonFiniteOutputError` if any of ``logits`` (one row per image, ``paths`` in the same
    order where known; a tensor, or an array of the loop without PyTorch) is NaN or infinite."""
    import numpy as np

    if isinstance(logits, np.ndarray):
        if logits.size == 0 or not np.issubdtype(logits.dtype, np.floating):
            return
        rows = np.flatnonzero(~np.isfinite(logits).reshape(len(logits), -1).all(axis=1)).tolist()
        nan = bool(rows) and bool(np.isnan(logits).any())
    else:
        import torch

        if logits.numel() == 0 or not logits.is_floating_point():
            return
        rows = (~torch.isfinite(logits).reshape(len(logits), -1).all(dim=1)).nonzero().flatten().tolist()
        nan = bool(rows) and bool(torch.isnan(logits).any())
    if not rows:
        return
    what = "NaN" if nan else "infinite"
    named = [str(paths[i]) for i in rows[:EXAMPLES] if i < len(paths)]
    where = f" (e.g. {', '.join(named)})" if named else ""
    raise NonFiniteOutputError(
        f"{model} gives {what} outputs for {len(rows)} of {len(logits)} images in a batch{where}: its weights or "
        "graph are broken (NaN or infinite values), so its predictions would be meaningless")
