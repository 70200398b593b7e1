"""Exact and near-duplicate detection across the classes of a collected set.

Exact duplicates share a sha256. Near duplicates have perceptual hashes (64-bit) within a Hamming
distance ``threshold``, found by :class:`cnnlab.imagedata.hashes.NearDupIndex` (shared with split).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnnlab.imagedata.hashes import NearDupIndex


@dataclass(frozen=True)
class KeptImage:
    """An image already in the dataset."""

    label: str
    sha256: str
    phash: int
    path: str


@dataclass(frozen=True)
class DuplicateOf:
    """Why an image is a duplicate: of which kept image, how (``exact`` or ``near``), how far."""

    kept: KeptImage
    kind: str
    distance: int

    def reason(self, label: str) -> str:
        """``exact-duplicate``, ``near-duplicate``, or ``cross-class-…`` when the kept image is
        in another class than ``label``."""
        tag = f"{self.kind}-duplicate"
        return tag if self.kept.label == label else f"cross-class-{tag}"

    def detail(self) -> str:
        far = f" (phash distance {self.distance})" if self.kind == "near" else ""
        return f"same image as {self.kept.path} in class {self.kept.label!r}{far}"


class DedupIndex:
    """Every kept image of a dataset, searchable by sha256 and perceptual hash, across classes."""

    def __init__(self, near_dup_threshold: int) -> None:
        self._by_sha: dict[str, KeptImage] = {}
        self._near: NearDupIndex[KeptImage] = NearDupIndex(near_dup_threshold)

    def __len__(self) -> int:
        return len(self._by_sha)

    def add(self, kept: KeptImage) -> None:
        if kept.sha256 not in self._by_sha:
            self._by_sha[kept.sha256] = kept
            self._near.add(kept, kept.phash)

    def find(self, sha256: str, phash: int, label: str) -> DuplicateOf | None:
        """The kept image this one duplicates, preferring exact matches and the same class."""
        exact = self._by_sha.get(sha256)
        if exact is not None:
            return DuplicateOf(exact, "exact", 0)
        near = self._near.query(phash)
        if not near:
            return None
        same_class = [(k, d) for k, d in near if k.label == label]
        kept, distance = (same_class or near)[0]
        return DuplicateOf(kept, "near", distance)
