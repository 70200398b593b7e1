"""Off-topic images: far from every class in feature space, and (where it knows the classes) not what the model sees.

Feature space: for every image and class, the mean cosine distance to its ``k`` nearest images of
that class (its near-duplicates left out, so a copy does not vouch for it), taken from
the neighbour lists. Each class's own images give the typical distance and spread (median and
MAD; small classes use the figures pooled over all classes); an image's feature z is its robust z
to the *nearest* class. A wrong label is near another class and scores low; an image that belongs
to no class is far from all of them.

Where the wrong-label check ran, its out-of-fold probabilities add a second view: an image of no
class gets spread-out probabilities, so the robust z of their entropy is averaged with the
feature z (measured: this finds more off-topic images at the same false-alarm rate than either).

The pretrained model's own opinion: when every class maps onto ImageNet classes
(:func:`cnnlab.imagedata.labels.map_classes`) and the model is an ImageNet classifier, the probability mass
it gives the union of those classes. It is *used* only where it has shown that it knows the
classes: when the median image of the set gets at least half of its mass there. Then a mass far
below the set's typical one (robust z of its logarithm) raises the score:
``z = max(z_features, (z_features + z_mass) / 2)``. Otherwise it is shown, not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.imagedata.neighbours import Neighbours

#: Classes with fewer own images than this use the distance figures pooled over all classes.
MIN_CLASS_IMAGES = 5
#: The model's opinion is used when the median image puts at least this much probability on the classes.
MIN_TYPICAL_MASS = 0.5
_MAD_TO_SIGMA = 1.4826
_MIN_DISTANCE_SPREAD = 0.01
_MIN_LOG_MASS_SPREAD = 0.5


@dataclass
class OfftopicFindings:
    """Per image: robust z-score to the nearest class, that class, the verdict and a score in [0, 1]."""

    z: np.ndarray
    nearest_class: np.ndarray
    flagged: np.ndarray
    score: np.ndarray
    imagenet_mass: np.ndarray | None = None
    imagenet_used: bool = False
    notes: list[str] = field(default_factory=list)


def score_from_z(z: np.ndarray, threshold: float) -> np.ndarray:
    """0 for z <= 0, 0.5 at the threshold, 0.75 at twice it, approaching 1."""
    return 1.0 - np.power(2.0, -np.maximum(z, 0.0) / threshold)


def _robust(values: np.ndarray, floor: float) -> tuple[float, float]:
    med = float(np.median(values))
    spread = float(np.median(np.abs(values - med))) * _MAD_TO_SIGMA
    return med, max(spread, floor)


def class_distances(nb: Neighbours, targets: np.ndarray, k: int, groups: np.ndarray) -> list[dict[int, float]]:
    """Per image, for each class in its neighbour list: the mean cosine distance to its ``k`` nearest images of it.

    Images in the same near-duplicate group (``groups``, -1: none) are not counted. A class with
    fewer than ``k`` images in the list is padded with the list's farthest distance (a lower bound).
    Classes absent from the list are farther still and are left out (memory stays ``n x k``).
    """
    n, width = nb.index.shape
    result: list[dict[int, float]] = []
    for i in range(n):
        keep = (groups[nb.index[i]] != groups[i]) | (groups[i] < 0)
        labels = targets[nb.index[i][keep]]
        d = 1.0 - nb.similarity[i][keep].astype(np.float64)
        farthest = float(1.0 - nb.similarity[i, -1]) if width else 1.0
        row: dict[int, float] = {}
        for c in np.unique(labels).tolist():
            mine = d[labels == c][:k]
            row[c] = float((mine.sum() + (k - len(mine)) * farthest) / k)
        result.append(row)
    return result


def feature_z(dist: list[dict[int, float]], targets: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Robust z of every image's distance to each class near it, minimised over those classes: (z, nearest class).

    An image with no class in its neighbour list gets z = 10 (as far as it gets).
    """
    n = len(dist)
    own = np.array([row.get(int(t), np.nan) for row, t in zip(dist, targets)])
    known = ~np.isnan(own)
    pooled = _robust(own[known], _MIN_DISTANCE_SPREAD) if known.any() else (0.0, 1.0)
    centre = np.full(n_classes, pooled[0])
    spread = np.full(n_classes, pooled[1])
    for c in range(n_classes):
        members = own[(targets == c) & known]
        if len(members) >= MIN_CLASS_IMAGES:
            centre[c], spread[c] = _robust(members, _MIN_DISTANCE_SPREAD)
    z = np.full(n, 10.0)
    nearest = targets.copy()
    for i, row in enumerate(dist):
        for c, d in row.items():
            value = (d - centre[c]) / spread[c]
            if value < z[i]:
                z[i], nearest[i] = value, c
    return z, nearest


def imagenet_mass(logits: np.ndarray, classes: Sequence[str], categories: Sequence[str],
                  mapping_file: Path | None) -> tuple[np.ndarray | None, str | None]:
    """Probability the model puts on the ImageNet classes of all the set's classes, or (None, why not)."""
    from cnnlab.imagedata.labels import imagenet_categories, map_classes

    if logits.shape[1] != 1000 or list(categories) != imagenet_categories():
        return None, "the model is not an ImageNet classifier: its own opinion on off-topic images is not asked"
    mappings = map_classes(list(classes), mapping_file)
    unmapped = [c for c, m in mappings.items() if not m.mapped]
    if unmapped:
        shown = ", ".join(repr(c) for c in unmapped[:5]) + (" ..." if len(unmapped) > 5 else "")
        return None, (f"{len(unmapped)} class(es) map onto no ImageNet class ({shown}): the pretrained model's own "
                      "opinion on off-topic images is not used (--mapping FILE can map them)")
    indices = sorted({i for m in mappings.values() for i in m.indices})
    shifted = logits - logits.max(1, keepdims=True)
    probs = np.exp(shifted)
    probs /= probs.sum(1, keepdims=True)
    return probs[:, indices].sum(1), None


def entropy_z(pred_probs: np.ndarray) -> np.ndarray:
    """Robust z of the entropy of each row of probabilities (rows of nan: 0)."""
    checked = ~np.isnan(pred_probs).any(1)
    z = np.zeros(len(pred_probs))
    if checked.sum() < MIN_CLASS_IMAGES:
        return z
    p = pred_probs[checked]
    entropy = -(p * np.log(np.maximum(p, 1e-12))).sum(1)
    med, spread = _robust(entropy, 1e-3)
    z[checked] = (entropy - med) / spread
    return z


def find_offtopic(nb: Neighbours, targets: Sequence[int] | np.ndarray, n_classes: int, *, k: int, z_threshold: float,
                  groups: np.ndarray | None = None, pred_probs: np.ndarray | None = None,
                  mass: np.ndarray | None = None) -> OfftopicFindings:
    """Score every image (rows of the neighbour lists) for belonging to none of the classes.

    ``pred_probs``: out-of-fold probabilities (rows of nan where not checked), ``mass``: the
    model's probability on the set's ImageNet classes (see the module's description).
    """
    y = np.asarray(targets, dtype=np.int64)
    groups = np.full(len(y), -1) if groups is None else groups
    z, nearest = feature_z(class_distances(nb, y, k, groups), y, n_classes)
    if pred_probs is not None:
        checked = ~np.isnan(pred_probs).any(1)
        z = np.where(checked, (z + entropy_z(pred_probs)) / 2, z)
    findings = OfftopicFindings(z=z, nearest_class=nearest, flagged=np.zeros(len(y), bool), score=np.zeros(len(y)),
                                imagenet_mass=mass)
    if mass is not None and len(mass):
        typical = float(np.median(mass))
        if typical >= MIN_TYPICAL_MASS:
            log_mass = np.log(np.maximum(mass, 1e-12))
            med, spread = _robust(log_mass, _MIN_LOG_MASS_SPREAD)
            z_mass = (med - log_mass) / spread
            findings.z = np.maximum(z, (z + z_mass) / 2)
            findings.imagenet_used = True
        else:
            findings.notes.append(f"the pretrained model puts {typical:.0%} of its probability on these classes "
                                  "for the median image: its opinion on off-topic images is shown, not used")
    findings.flagged = findings.z >= z_threshold
    findings.score = score_from_z(findings.z, z_threshold)
    return findings
