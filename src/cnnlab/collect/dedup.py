"""Exact and near-duplicate detection.

Exact duplicates share a sha256. Near duplicates have perceptual hashes (64-bit) within a Hamming
distance ``threshold``. :class:`NearDupIndex` finds them without comparing every pair: split the
64 bits into ``threshold + 1`` blocks; two hashes within ``threshold`` bits agree exactly on at
least one block (pigeonhole), so only hashes sharing a block value are compared.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

HASH_BITS = 64


def hamming(a: int, b: int) -> int:
    """Number of differing bits."""
    return (a ^ b).bit_count()


class NearDupIndex(Generic[K]):
    """Hashes under keys; :meth:`query` returns keys within ``threshold`` bits."""

    def __init__(self, threshold: int, bits: int = HASH_BITS) -> None:
        if threshold < 0:
            raise ValueError("threshold must be >= 0")
        self.threshold = threshold
        self.bits = bits
        n_blocks = min(threshold + 1, bits)
        edges = [round(i * bits / n_blocks) for i in range(n_blocks + 1)]
        self._blocks = [(lo, (1 << (hi - lo)) - 1) for lo, hi in zip(edges, edges[1:])]
        self._buckets: list[dict[int, list[int]]] = [defaultdict(list) for _ in self._blocks]
        self._keys: list[K] = []
        self._hashes: list[int] = []

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: K, h: int) -> None:
        pos = len(self._keys)
        self._keys.append(key)
        self._hashes.append(h)
        for (shift, mask), bucket in zip(self._blocks, self._buckets):
            bucket[(h >> shift) & mask].append(pos)

    def query(self, h: int) -> list[tuple[K, int]]:
        """Keys whose hash is within ``threshold`` of ``h``, nearest first (ties: oldest first)."""
        if self.threshold >= self.bits:
            positions: set[int] = set(range(len(self._keys)))
        else:
            positions = set()
            for (shift, mask), bucket in zip(self._blocks, self._buckets):
                positions.update(bucket.get((h >> shift) & mask, ()))
        found = []
        for pos in positions:
            d = hamming(h, self._hashes[pos])
            if d <= self.threshold:
                found.append((d, pos))
        found.sort()
        return [(self._keys[pos], d) for d, pos in found]


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
