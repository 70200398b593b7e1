"""Files that cannot be used at all: no bytes, no image format, a decompression bomb, damaged pixels."""

from __future__ import annotations

from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import Detector, Need, register
from cnnlab.review.evidence import Evidence
from cnnlab.review.result import Finding


@register
class UnreadableDetector(Detector):
    """From the header check, and from the full decode when the images were embedded (a truncated JPEG)."""

    issue = ReviewIssue.UNREADABLE
    needs = frozenset({Need.FILES})

    def find(self, evidence: Evidence) -> list[Finding]:
        return [Finding(evidence.rel[i], evidence.names[i], self.issue, 1.0,
                        detail=f"{reason}: {detail}" if detail else reason, evidence={"reason": reason})
                for i, (reason, detail) in evidence.unreadable.items()]
