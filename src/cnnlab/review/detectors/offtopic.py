"""Off-topic images: far from every class (:mod:`cnnlab.review.offtopic` describes the score)."""

from __future__ import annotations

from typing import Any

from cnnlab.options import ReviewIssue
from cnnlab.review.detectors.base import Detector, Need, register
from cnnlab.review.evidence import Evidence, top_classes
from cnnlab.review.result import Finding


@register
class OfftopicDetector(Detector):
    """Images whose robust distance to the nearest class reaches the threshold."""

    issue = ReviewIssue.OFFTOPIC
    needs = frozenset({Need.FILES, Need.EMBEDDINGS, Need.PROBABILITIES})

    def find(self, evidence: Evidence) -> list[Finding]:
        off, classes = evidence.offtopic, evidence.images.classes
        mass, probs = evidence.imagenet_mass, evidence.imagenet_probabilities
        found = []
        for j, i in enumerate(evidence.rows.tolist()):
            if not off.flagged[j]:
                continue
            nearest = classes[off.nearest_class[j]]
            details: dict[str, Any] = {"z": round(float(off.z[j]), 2), "nearest_class": nearest,
                                       "neighbours": evidence.neighbour_evidence(j)}
            if mass is not None:
                details["imagenet_mass"] = round(float(mass[j]), 3)
            if probs is not None:
                details["model_top"] = top_classes(probs[j], evidence.categories)
            found.append(Finding(evidence.rel[i], evidence.names[i], self.issue, float(off.score[j]),
                                 detail=f"far from every class (z {off.z[j]:.1f}; nearest: {nearest})",
                                 evidence=details))
        return found
