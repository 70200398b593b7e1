"""Hashes of images and files: content digests, perceptual hashes and the near-duplicate index.

:func:`file_sha256` is the one way cnnlab hashes a file (export cache keys, embedding caches, weights
files checked against the hash prefix in their names). :func:`perceptual_hash` and
:class:`NearDupIndex` are how collect, split and train tell near duplicates apart; they live here,
with the data, so that reading a data set never imports the crawler.

Near duplicates have perceptual hashes (64-bit) within a Hamming distance ``threshold``.
:class:`NearDupIndex` finds them without comparing every pair: split the 64 bits into
``threshold + 1`` blocks; two hashes within ``threshold`` bits agree exactly on at least one block
(pigeonhole), so only hashes sharing a block value are compared.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Hashable
from pathlib import Path
from typing import TYPE_CHECKING, Final, Generic, TypeVar

if TYPE_CHECKING:
    from PIL import Image

K = TypeVar("K", bound=Hashable)

#: Bits in a perceptual hash.
HASH_BITS: Final[int] = 64
#: Perceptual-hash distance (of 64 bits) at or below which two images are near duplicates.
DEFAULT_NEAR_DUP_THRESHOLD: Final[int] = 4


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def perceptual_hash(img: Image.Image) -> str:
    """``imagehash.phash`` (64-bit DCT perceptual hash) of an image, as 16 hex digits."""
    import imagehash  # scipy underneath: imported when an image is hashed, not with the package

    return str(imagehash.phash(img))


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
