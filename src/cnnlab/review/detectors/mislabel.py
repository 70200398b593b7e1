"""Likely wrong labels: confident learning on out-of-fold probabilities (:mod:`cnnlab.review.mislabel`)."""

from __future__ import annotations

from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import Detector, Need, register
from cnnlab.review.evidence import Evidence, top_classes
from cnnlab.review.result import Finding


@register
class MislabelDetector(Detector):
    """Images whose label cleanlab finds unlikely, but not those far from every class (those are off-topic:
    another label would not fit them either)."""

    issue = ReviewIssue.MISLABEL
    needs = frozenset({Need.FILES, Need.EMBEDDINGS, Need.PROBABILITIES})

    def find(self, evidence: Evidence) -> list[Finding]:
        mis, off, classes = evidence.mislabels, evidence.offtopic, evidence.images.classes
        targets, names = evidence.targets, evidence.names
        found = []
        for j, i in enumerate(evidence.rows.tolist()):
            if not mis.flagged[j] or off.flagged[j]:
                continue
            probs = mis.pred_probs[j]
            suggested = classes[mis.suggested[j]]
            found.append(Finding(
                evidence.rel[i], names[i], self.issue, float(mis.score[j]), suggested_label=suggested,
                detail=f"p({names[i]}) {probs[targets[j]]:.2f}, p({suggested}) {probs[mis.suggested[j]]:.2f}",
                evidence={"probabilities": top_classes(probs, classes), "neighbours": evidence.neighbour_evidence(j)}))
        return found
