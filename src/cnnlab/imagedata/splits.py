"""Stratified, deterministic train/val/test splits that keep near duplicates together.

:func:`make_split` reads a class-folder dataset (the layout ``cnnlab collect`` writes, read the way
:func:`cnnlab.imagedata.datasets.scan_dataset` reads it), groups near duplicates (perceptual hashes within
``near_dup_threshold`` bits, taken from ``manifest.jsonl`` when present, computed otherwise; and, given an
``embed`` function, crops and rescales of one photograph, which hashes miss: feature neighbours verified on
pixels, :func:`cnnlab.imagedata.near_duplicates.crop_pairs`), and assigns each whole group to one split,
class by class, so that every class gets close to the requested fractions. The result is ``DIR/split.csv``
with ``path,label,split`` (paths relative to ``DIR``), which ``scan_dataset(DIR, split="test")`` and the ``--split`` options read.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from cnnlab.errors import DatasetError, ImageDecodeError
from cnnlab.imagedata.datasets import SPLIT_NAMES
from cnnlab.imagedata.hashes import DEFAULT_NEAR_DUP_THRESHOLD, HASH_BITS, NearDupIndex, perceptual_hash
from cnnlab.outputs import atomic_write
from cnnlab.progress import Progress

if TYPE_CHECKING:
    import numpy as np

#: Computes features for a list of files: (one row per file, whether each row is real).
Embedder = Callable[[Sequence[Path]], "tuple[np.ndarray, Sequence[bool]]"]

SPLIT_FILE: Final[str] = "split.csv"
SPLITS: Final[tuple[str, ...]] = SPLIT_NAMES


@dataclass(frozen=True)
class SplitRow:
    path: str
    """Relative to the dataset folder, ``/``-separated."""
    label: str
    split: str
    group: int
    """Near-duplicate group id; rows sharing it are in the same split."""


@dataclass
class SplitResult:
    """A split and where it was written."""

    root: Path
    file: Path | None
    rows: list[SplitRow]
    seed: int
    val: float
    test: float
    near_dup_threshold: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per class: images per split."""
    groups: int = 0
    near_duplicate_groups: int = 0
    """Groups of two or more images (kept together)."""
    images_in_near_duplicate_groups: int = 0
    unhashed: list[str] = field(default_factory=list)
    """Files that could not be decoded to hash (kept as their own group)."""
    crop_pairs: int | None = None
    """Pairs found to be crops or rescales of one photograph (``None``: not looked for)."""
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Entries of the folder that are not image files to split (a FIFO, a broken link, a folder named like an
    image...), with the reason: not in ``split.csv``."""

    def to_dict(self) -> dict[str, Any]:
        totals = Counter(r.split for r in self.rows)
        return {
            "root": str(self.root),
            "file": str(self.file) if self.file else None,
            "seed": self.seed,
            "val": self.val,
            "test": self.test,
            "near_dup_threshold": self.near_dup_threshold,
            "images": len(self.rows),
            "totals": {s: totals.get(s, 0) for s in SPLITS},
            "counts": self.counts,
            "groups": self.groups,
            "near_duplicate_groups": self.near_duplicate_groups,
            "images_in_near_duplicate_groups": self.images_in_near_duplicate_groups,
            "unhashed": list(self.unhashed),
            "crop_pairs": self.crop_pairs,
            "skipped": list(self.skipped),
        }


def make_split(
    root: str | Path,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    near_dup_threshold: int = DEFAULT_NEAR_DUP_THRESHOLD,
    *,
    write: bool = True,
    embed: Embedder | None = None,
    progress: Progress | None = None,
) -> SplitResult:
    """Split the class-folder dataset ``root`` and (by default) write ``root/split.csv``.

    Args:
        root: dataset folder (``root/<class>/<images>``).
        val, test: fractions of each class for validation and test; the rest is train.
        seed: the same seed and files give the same split.
        near_dup_threshold: images whose perceptual hashes differ in at most this many bits (of 64)
            are one group and land in one split; ``-1`` groups nothing.
        write: write ``split.csv`` (atomically).
        embed: features of files (e.g. :func:`cnnlab.runtime.features.image_features`): with it, crops and
            rescales of one photograph are grouped too (unless ``near_dup_threshold`` is ``-1``).
        progress: reports the hashing, features and pixel checks.

    Raises:
        DatasetError: bad fractions, no images.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise DatasetError(f"the validation and test fractions (val, test: {val}, {test}) must be in [0, 1) with a "
                           "sum below 1")
    if isinstance(near_dup_threshold, bool) or not isinstance(near_dup_threshold, int) or not (
            -1 <= near_dup_threshold <= HASH_BITS // 2):
        raise DatasetError(f"the near-duplicate threshold (near_dup_threshold) must be from -1 (off) to {HASH_BITS // 2} "
                           f"bits, got {near_dup_threshold!r}: beyond that unrelated photos match and fall into one split")
    from cnnlab.imagedata.datasets import scan_dataset

    root = Path(root)
    if not root.is_dir():
        what = "is a file, not a dataset folder" if root.exists() else "does not exist"
        raise DatasetError(f"{root} {what} (expected {root}/<class>/<images>)")
    images = scan_dataset(root)
    if not images.paths:
        raise DatasetError(f"{root} holds no images to split")
    rel = [p.relative_to(root).as_posix() for p in images.paths]
    labels = [images.classes[t] for t in images.targets]

    progress = progress or Progress()
    hashes, unhashed = _phashes(root, rel)
    pairs: list[tuple[int, int]] | None = None
    if embed is not None and near_dup_threshold >= 0:
        pairs = _crop_pairs(images.paths, embed, progress)
    group_of = _group(rel, hashes, near_dup_threshold, pairs or [])

    members: dict[int, list[int]] = defaultdict(list)
    for i, g in enumerate(group_of):
        members[g].append(i)
    # a group's stratum is its most common class (ties: the first name)
    by_stratum: dict[str, list[int]] = defaultdict(list)
    for g, idx in members.items():
        tally = Counter(labels[i] for i in idx)
        top = max(sorted(tally), key=lambda c: tally[c])
        by_stratum[top].append(g)

    split_of: dict[int, str] = {}
    for label in sorted(by_stratum):
        groups = sorted(by_stratum[label], key=lambda g: min(rel[i] for i in members[g]))
        # bytes seed the same as the str they encode; surrogate escapes (non-UTF-8 folder names) need them
        random.Random(f"cnnlab-split:{seed}:{label}".encode("utf-8", "surrogateescape")).shuffle(groups)
        n = sum(len(members[g]) for g in groups)
        target = {"test": test * n, "val": val * n}
        target["train"] = n - target["test"] - target["val"]
        have = dict.fromkeys(SPLITS, 0)
        for g in groups:
            choice = max(("test", "val", "train"), key=lambda s: target[s] - have[s])
            split_of[g] = choice
            have[choice] += len(members[g])

    rows = sorted(
        (SplitRow(rel[i], labels[i], split_of[group_of[i]], group_of[i]) for i in range(len(rel))),
        key=lambda r: r.path,
    )
    counts: dict[str, dict[str, int]] = {c: dict.fromkeys(SPLITS, 0) for c in images.classes if c in set(labels)}
    for r in rows:
        counts[r.label][r.split] += 1
    big = [idx for idx in members.values() if len(idx) > 1]
    result = SplitResult(
        root=root,
        file=None,
        rows=rows,
        seed=seed,
        val=val,
        test=test,
        near_dup_threshold=near_dup_threshold,
        counts=counts,
        groups=len(members),
        near_duplicate_groups=len(big),
        images_in_near_duplicate_groups=sum(len(b) for b in big),
        unhashed=unhashed,
        crop_pairs=None if pairs is None else len(pairs),
        skipped=[s.to_dict() for s in images.skipped],
    )
    if write:
        result.file = write_split(root, rows)
    return result


def write_split(root: Path, rows: list[SplitRow]) -> Path:
    """Write ``root/split.csv`` (``path,label,split``) atomically (temporary file, fsync, rename).

    The file is UTF-8; a file name that is not valid UTF-8 (possible on Linux) is written as its
    original bytes (surrogate escapes), which is how :func:`cnnlab.imagedata.datasets.scan_dataset` reads it
    back. A full disk or an unwritable folder is an :class:`OutputError` and leaves any earlier
    ``split.csv`` as it was (see :func:`cnnlab.outputs.atomic_write`).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "split"])
    for r in rows:
        writer.writerow([r.path, r.label, r.split])
    return atomic_write(root / SPLIT_FILE, buf.getvalue())


def _phashes(root: Path, rel: list[str]) -> tuple[list[int | None], list[str]]:
    """Perceptual hash per file: from ``manifest.jsonl`` when it has one, decoded otherwise."""
    known: dict[str, str] = {}
    manifest = root / "manifest.jsonl"
    if manifest.is_file():
        with manifest.open("rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue
                if isinstance(rec, dict) and rec.get("status") == "ok" and rec.get("path") and rec.get("phash"):
                    known[str(rec["path"])] = str(rec["phash"])
    hashes: list[int | None] = []
    unhashed: list[str] = []
    for path in rel:
        value = known.get(path)
        if value is None:
            value = _compute_phash(root / path)
        if value is None:
            unhashed.append(path)
            hashes.append(None)
        else:
            hashes.append(int(value, 16))
    return hashes, unhashed


def _compute_phash(path: Path) -> str | None:
    from cnnlab.imagedata.decode import decode_image

    try:
        return perceptual_hash(decode_image(path))
    except ImageDecodeError:
        return None


def _crop_pairs(paths: list[Path], embed: Embedder, progress: Progress) -> list[tuple[int, int]]:
    from cnnlab.imagedata.near_duplicates import crop_pairs

    features, usable = embed(paths)
    progress.start("crops", "looking for crops of one photo", total=sum(bool(u) for u in usable))
    found = crop_pairs(paths, features, usable=usable, on_thumbnail=lambda: progress.update("crops", advance=1))
    progress.finish("crops", f"{len(found)} pairs of crops or rescales of one photo kept together")
    return found


def _group(rel: list[str], hashes: list[int | None], threshold: int,
           pairs: Sequence[tuple[int, int]] = ()) -> list[int]:
    """Union-find over near-duplicate pairs (by hash, and ``pairs`` found otherwise); a group id per item (the
    smallest member index)."""
    parent = list(range(len(rel)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    if threshold >= 0:
        index: NearDupIndex[int] = NearDupIndex(threshold)
        for i, h in enumerate(hashes):
            if h is None:
                continue
            for j, _ in index.query(h):
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            index.add(i, h)
    return [find(i) for i in range(len(rel))]
