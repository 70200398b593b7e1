"""Paired comparisons of models on the same samples, each with a verdict in plain English."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy.typing as npt

from cnnlab.metrics._inputs import as_bool_array, check_same_length, ci_to_list
from cnnlab.metrics.significance import McNemarResult, mcnemar_exact, overlapping, wilson_interval


def _format_p(p: float) -> str:
    if p < 0.001:
        return "p<0.001"
    return f"p={p:.2g}"


def _format_level(alpha: float) -> str:
    return f"{alpha * 100:g}%"


@dataclass(frozen=True)
class PairwiseComparison:
    """Paired comparison of two models on the same samples.

    Attributes:
        model_a, model_b: the names.
        n: paired samples.
        hits_a, hits_b: hits of each model.
        ci_a, ci_b: Wilson intervals of their accuracies.
        cis_overlap: whether those intervals overlap (descriptive only; the test is McNemar).
        mcnemar: the exact McNemar test, ``b`` = A-only hits, ``c`` = B-only hits.
        alpha: the significance level of ``verdict``.
        verdict: one plain-English line, e.g. ``"resnet50 vs alexnet: 39 vs 36 of 50 top-1 hits;
            McNemar exact p=0.45 — not a significant difference at 5%"``.
    """

    model_a: str
    model_b: str
    n: int
    hits_a: int
    hits_b: int
    ci_a: tuple[float, float]
    ci_b: tuple[float, float]
    cis_overlap: bool
    mcnemar: McNemarResult
    alpha: float
    verdict: str

    @property
    def significant(self) -> bool:
        """Whether McNemar finds a difference at ``alpha``."""
        return self.mcnemar.significant(self.alpha)

    @property
    def better(self) -> str | None:
        """The model with more hits when the difference is significant, else ``None``."""
        if not self.significant:
            return None
        return self.model_a if self.hits_a > self.hits_b else self.model_b

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "n": self.n,
            "hits_a": self.hits_a,
            "hits_b": self.hits_b,
            "ci_a": ci_to_list(self.ci_a),
            "ci_b": ci_to_list(self.ci_b),
            "cis_overlap": self.cis_overlap,
            "mcnemar": self.mcnemar.to_dict(),
            "alpha": self.alpha,
            "significant": self.significant,
            "better": self.better,
            "verdict": self.verdict,
        }


def compare_models(
    hits_by_model: Mapping[str, npt.ArrayLike],
    *,
    alpha: float = 0.05,
    confidence: float = 0.95,
    what: str = "top-1 hits",
) -> list[PairwiseComparison]:
    """Compare every pair of models on the same samples, in the mapping's order.

    Args:
        hits_by_model: ``{model name: (N,) per-sample hits}``, the same samples in the same order
            for every model (e.g. from :func:`topk_hits` with ``k=1``).
        alpha: significance level of the McNemar test.
        confidence: level of the Wilson intervals.
        what: what the hits are, for the verdict text.

    Returns:
        One :class:`PairwiseComparison` per unordered pair ``(a, b)`` with ``a`` listed first.
        With ``N == 0`` the intervals are nan and ``cis_overlap`` is ``False``.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    arrays = {
        name: as_bool_array(h, f"hits_by_model[{name!r}]") for name, h in hits_by_model.items()
    }
    if arrays:
        check_same_length(**{f"hits_by_model[{name!r}]": a for name, a in arrays.items()})
    out = []
    for (name_a, a), (name_b, b) in combinations(arrays.items(), 2):
        n = len(a)
        hits_a, hits_b = int(a.sum()), int(b.sum())
        ci_a, ci_b = wilson_interval(hits_a, n, confidence), wilson_interval(hits_b, n, confidence)
        test = mcnemar_exact(a, b)
        significant = test.significant(alpha)
        level = _format_level(alpha)
        if significant:
            winner = name_a if hits_a > hits_b else name_b
            conclusion = f"significant difference at {level} ({winner} is better)"
        elif test.discordant == 0:
            conclusion = f"not a significant difference at {level} (the two never disagree)"
        else:
            conclusion = f"not a significant difference at {level}"
        verdict = (
            f"{name_a} vs {name_b}: {hits_a} vs {hits_b} of {n} {what}; "
            f"McNemar exact {_format_p(test.p_value)} — {conclusion}"
        )
        out.append(
            PairwiseComparison(
                model_a=name_a,
                model_b=name_b,
                n=n,
                hits_a=hits_a,
                hits_b=hits_b,
                ci_a=ci_a,
                ci_b=ci_b,
                cis_overlap=bool(n) and overlapping(ci_a, ci_b),
                mcnemar=test,
                alpha=alpha,
                verdict=verdict,
            )
        )
    return out
