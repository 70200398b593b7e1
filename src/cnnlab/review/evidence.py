"""What review's detectors look at, each piece computed once, when the first detector asks for it.

Detectors share their expensive inputs (neighbour lists, duplicate groups, out-of-fold
probabilities): off-topic scores use the duplicate groups and the probabilities that the
wrong-label check computes, and a file flagged off-topic is not also reported as a wrong label. As
in cleanlab's ``Datalab``, where issue managers read each other's results, :class:`Evidence` holds
these results so that the order in which detectors run does not matter and nothing runs twice.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.imagedata.datasets import LabelledImages
    from cnnlab.imagedata.near_duplicates import DuplicateFindings
    from cnnlab.imagedata.neighbours import Neighbours
    from cnnlab.review.config import ReviewConfig
    from cnnlab.review.embeddings import Embeddings
    from cnnlab.review.files import FileCheck
    from cnnlab.review.mislabel import MislabelFindings
    from cnnlab.review.offtopic import OfftopicFindings

#: Neighbours kept per image (off-topic distances, duplicate candidates, evidence).
NEIGHBOURS_KEPT = 50
#: Feature similarity below which two images are not checked for being duplicates.
MIN_DUPLICATE_SIMILARITY = 0.5


@dataclass(eq=False)
class Evidence:
    """One review's inputs: the files (``rel``: paths relative to the set, ``names``: their labels), the
    header check, the embeddings (None when no detector needs them) and the settings; the rest on demand.

    Positions ``i`` index the files; positions ``j`` index :attr:`rows`, the files that were embedded.
    """

    images: LabelledImages
    rel: list[str]
    names: list[str]
    checks: FileCheck
    config: ReviewConfig
    embeddings: Embeddings | None = None
    categories: tuple[str, ...] = ()
    progress: Progress = field(default_factory=Progress)
    #: What the analyses had to say (a class too small to check, the model's opinion not used...).
    notes: list[str] = field(default_factory=list)

    # -- the files ------------------------------------------------------------------------------
    @functools.cached_property
    def unreadable(self) -> dict[int, tuple[str, str]]:
        """Position -> (reason, detail) of every file that cannot be read: by its header, or by the full decode."""
        bad: dict[int, tuple[str, str]] = dict(self.checks.unreadable)
        if self.embeddings is not None:
            where = {str(p): i for i, p in enumerate(self.images.paths)}
            for s in self.embeddings.skipped:
                i = where.get(s.path)
                if i is not None:
                    bad.setdefault(i, (s.reason, s.detail))
        return bad

    @functools.cached_property
    def rows(self) -> np.ndarray:
        """Positions of the files that were embedded (empty without embeddings)."""
        if self.embeddings is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.embeddings.ok)

    # -- what the embeddings give -----------------------------------------------------------------
    @property
    def features(self) -> np.ndarray:
        assert self.embeddings is not None, "a detector that needs embeddings ran without them"
        return self.embeddings.features[self.rows]

    @functools.cached_property
    def targets(self) -> np.ndarray:
        return np.asarray(self.images.targets)[self.rows]

    @functools.cached_property
    def neighbours(self) -> Neighbours:
        from cnnlab.imagedata.neighbours import nearest_neighbours

        return nearest_neighbours(self.features, NEIGHBOURS_KEPT)

    def neighbour_evidence(self, j: int, k: int = 3) -> list[list[object]]:
        """The ``k`` nearest images of row ``j``: [path, label, similarity], for the report."""
        nb, rows = self.neighbours, self.rows
        return [[self.rel[rows[n]], self.names[rows[n]], round(float(s), 3)]
                for n, s in zip(nb.index[j][:k].tolist(), nb.similarity[j][:k].tolist())]

    @functools.cached_property
    def duplicates(self) -> DuplicateFindings:
        """Near-duplicate groups among the embedded files (candidates by features, verified on pixels)."""
        from cnnlab.imagedata.near_duplicates import FINE_SIDE, find_duplicates, thumbnail

        paths = [self.images.paths[i] for i in self.rows]
        too_small = set(self.checks.too_small(self.config.min_side))  # reported as such; too little to compare
        self.progress.start("thumbs", "thumbnails for duplicates", total=len(paths))
        thumbs = []
        for i, p in zip(self.rows.tolist(), paths):
            thumbs.append(None if i in too_small else _thumb_or_none(thumbnail, p))
            self.progress.update("thumbs", advance=1)
        self.progress.finish("thumbs")
        return find_duplicates(self.neighbours, thumbs, [self.checks.pixels(i) for i in self.rows],
                               lambda j: _thumb_or_none(thumbnail, paths[j], FINE_SIDE),
                               threshold=self.config.duplicate_match, candidates=self.config.duplicate_candidates,
                               min_similarity=MIN_DUPLICATE_SIMILARITY, doubtful=self.closer_to_another_class)

    @functools.cached_property
    def closer_to_another_class(self) -> set[int]:
        """Rows whose features lie closer to another class's mean than to their own: cheap evidence of a wrong
        label, enough to choose which copy of a duplicate to keep (the one in the class it looks like)."""
        feats = self.features / np.maximum(np.linalg.norm(self.features, axis=1, keepdims=True), 1e-12)
        classes = np.unique(self.targets)
        if len(classes) < 2:
            return set()
        means = np.stack([feats[self.targets == c].mean(axis=0) for c in classes])
        nearest = classes[np.argmax(feats @ means.T, axis=1)]
        return {int(j) for j in np.flatnonzero(nearest != self.targets)}

    @functools.cached_property
    def mislabels(self) -> MislabelFindings:
        """Out-of-fold probabilities of a linear probe and cleanlab's verdict on every label."""
        from cnnlab.review.mislabel import find_mislabels

        found = find_mislabels(self.features, self.targets, self.images.classes, folds=self.config.folds,
                               regularization=self.config.regularization, seed=self.config.seed)
        self.notes += found.notes
        return found

    @functools.cached_property
    def imagenet_mass(self) -> np.ndarray | None:
        """The pretrained model's probability on the set's ImageNet classes, or None (and a note saying why)."""
        from cnnlab.review.offtopic import imagenet_mass

        assert self.embeddings is not None
        mass, why_not = imagenet_mass(self.embeddings.logits[self.rows], self.images.classes, self.categories,
                                      self.config.mapping_file)
        if why_not:
            self.notes.append(why_not)
        return mass

    @functools.cached_property
    def imagenet_probabilities(self) -> np.ndarray | None:
        """Softmax of the logits when they are over the model's own categories (shown in the report)."""
        assert self.embeddings is not None
        logits = self.embeddings.logits[self.rows]
        if len(self.categories) != logits.shape[1]:
            return None
        shifted = np.exp(logits - logits.max(1, keepdims=True))
        return shifted / shifted.sum(1, keepdims=True)

    @functools.cached_property
    def offtopic(self) -> OfftopicFindings:
        """Robust distance of every embedded file to the nearest class (with the probabilities' and the model's view)."""
        from cnnlab.review.offtopic import find_offtopic

        mis = self.mislabels
        mass = self.imagenet_mass
        found = find_offtopic(self.neighbours, self.targets, len(self.images.classes), k=self.config.neighbours,
                              z_threshold=self.config.offtopic_z, groups=self.duplicates.group,
                              pred_probs=mis.pred_probs, mass=mass)
        self.notes += found.notes
        return found


def _thumb_or_none(make: Callable[..., np.ndarray], path: Path, *args: int) -> np.ndarray | None:
    from cnnlab.errors import ImageDecodeError

    try:
        return make(path, *args)
    except ImageDecodeError:
        return None


def top_classes(probs: np.ndarray, names: Sequence[str], k: int = 3) -> list[list[object]]:
    """The ``k`` most probable classes of one row: [name, probability] (nan sorts last)."""
    order = np.argsort(-np.nan_to_num(probs, nan=-1.0), kind="stable")[:k]
    return [[names[c], round(float(probs[c]), 3)] for c in order]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))
