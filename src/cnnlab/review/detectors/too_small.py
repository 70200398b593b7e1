"""Images too small to learn from: the shorter side below ``min_side`` pixels (from the header, no decode)."""

from __future__ import annotations

from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import Detector, Need, register
from cnnlab.review.evidence import Evidence
from cnnlab.review.result import Finding


@register
class TooSmallDetector(Detector):
    """Readable files whose shorter side is below the configured minimum (unreadable ones are reported as such)."""

    issue = ReviewIssue.TOO_SMALL
    needs = frozenset({Need.FILES})

    def find(self, evidence: Evidence) -> list[Finding]:
        min_side = evidence.config.min_side
        found = []
        for i in evidence.checks.too_small(min_side):
            if i in evidence.unreadable:
                continue
            w, h = evidence.checks.sizes[i] or (0, 0)
            found.append(Finding(evidence.rel[i], evidence.names[i], self.issue, 1.0,
                                 detail=f"{w}x{h} pixels (below {min_side})", evidence={"size": [w, h]}))
        return found
