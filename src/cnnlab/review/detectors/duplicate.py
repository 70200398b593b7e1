"""Near-duplicates: copies, crops, rescales and recolours of one picture (:mod:`cnnlab.imagedata.near_duplicates`)."""

from __future__ import annotations

from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import Detector, Need, register
from cnnlab.review.evidence import Evidence, cosine
from cnnlab.review.result import Finding


@register
class DuplicateDetector(Detector):
    """Every image of a near-duplicate group but the kept one, within or across classes."""

    issue = ReviewIssue.DUPLICATE
    needs = frozenset({Need.FILES, Need.EMBEDDINGS})

    def find(self, evidence: Evidence) -> list[Finding]:
        dups, rows, rel, names = evidence.duplicates, evidence.rows, evidence.rel, evidence.names
        features, targets = evidence.features, evidence.targets
        found = []
        for j, i in enumerate(rows.tolist()):
            if not dups.flagged[j]:
                continue
            k = int(dups.keeper[j])
            across = targets[k] != targets[j]
            found.append(Finding(
                rel[i], names[i], self.issue, float(dups.score[j]),
                detail=f"near-duplicate of {rel[rows[k]]}" + (f" (class {names[rows[k]]!r})" if across else ""),
                evidence={"kept": rel[rows[k]], "kept_label": names[rows[k]], "match": round(float(dups.score[j]), 3),
                          "similarity": round(cosine(features[j], features[k]), 3),
                          "group": int(dups.group[j]), "across_classes": bool(across)}))
        return found
