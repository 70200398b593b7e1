"""Confidence intervals of a proportion and the exact McNemar test of two paired classifiers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import stats

from cnnlab.metrics._inputs import as_bool_array, check_same_length


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / n``.

    Better behaved than the normal ("Wald") interval for small ``n`` and for proportions near 0
    or 1, and never leaves [0, 1]. ``n == 0`` gives ``(nan, nan)``.

    Example: 39 of 50 right at 95% gives about ``(0.648, 0.872)``.
    """
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise ValueError(f"need 0 <= successes <= n, got successes={successes}, n={n}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n == 0:
        return (math.nan, math.nan)
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    p = successes / n
    z2n = z * z / n
    denom = 1.0 + z2n
    centre = (p + z2n / 2.0) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2n / (4.0 * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return (low, high)


@dataclass(frozen=True)
class McNemarResult:
    """Exact McNemar test of two classifiers scored on the same samples.

    Attributes:
        b: samples that A got right and B got wrong.
        c: samples that A got wrong and B got right.
        n: paired samples in all.
        p_value: two-sided exact binomial p-value of ``b`` out of ``b + c`` at 1/2
            (1.0 when ``b + c == 0``: the classifiers never disagree).
    """

    b: int
    c: int
    n: int
    p_value: float

    @property
    def discordant(self) -> int:
        """Samples on which exactly one of the two classifiers is right (``b + c``)."""
        return self.b + self.c

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether the difference is significant at level ``alpha`` (``p_value < alpha``)."""
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {alpha}")
        return self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-ready dict."""
        return {"b": self.b, "c": self.c, "n": self.n, "p_value": self.p_value}


def mcnemar_exact(correct_a: npt.ArrayLike, correct_b: npt.ArrayLike) -> McNemarResult:
    """Exact (binomial) McNemar test on paired per-sample correctness of models A and B.

    Only the samples where the two disagree carry information: under the null hypothesis of
    equal accuracy each of them is A's win or B's win with probability 1/2.
    """
    a = as_bool_array(correct_a, "correct_a")
    b_arr = as_bool_array(correct_b, "correct_b")
    n = check_same_length(correct_a=a, correct_b=b_arr)
    b = int(np.count_nonzero(a & ~b_arr))
    c = int(np.count_nonzero(~a & b_arr))
    if b + c == 0:
        p = 1.0
    else:
        p = float(min(1.0, stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue))
    return McNemarResult(b=b, c=c, n=n, p_value=p)


def overlapping(ci_a: tuple[float, float], ci_b: tuple[float, float]) -> bool:
    """Whether two closed intervals ``(low, high)`` share at least one point.

    Overlapping confidence intervals do **not** prove that two paired accuracies are equal, nor
    does a gap prove a difference at the same level: use :func:`mcnemar_exact` for that.

    Raises:
        ValueError: if a bound is nan (e.g. the interval of an empty set) or ``low > high``.
    """
    for name, (low, high) in (("ci_a", ci_a), ("ci_b", ci_b)):
        if math.isnan(low) or math.isnan(high):
            raise ValueError(f"{name} has a nan bound; there is no interval to compare")
        if low > high:
            raise ValueError(f"{name} has low > high: {(low, high)}")
    return ci_a[0] <= ci_b[1] and ci_b[0] <= ci_a[1]
