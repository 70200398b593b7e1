"""Finding images: folders, globs, class-folder trees and manifests.

* :func:`expand_paths` turns files, folders (recursive) and globs into a list of image files.
* :func:`scan_dataset` reads a labelled set: a class-folder tree (``DIR/<class>/*.jpg``, like
  torchvision's ImageFolder) or a manifest (CSV or JSONL with ``path`` and ``label`` columns and an
  optional ``split`` column, e.g. the ``split.csv`` that ``cnnlab split`` writes).

Feeding the images to a model is :mod:`cnnlab.inference`'s job.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import DatasetError

#: File name extensions treated as images when scanning folders (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why (``reason`` is one of :data:`cnnlab.images.REASONS`)."""

    path: str
    reason: str
    detail: str = ""
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelledImages:
    """A labelled image set: parallel lists of paths and class ids, plus what was left out."""

    root: Path
    paths: list[Path]
    targets: list[int]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for t in self.targets:
            counts[self.classes[t]] += 1
        return counts

    def subset(self, keep: Sequence[int]) -> LabelledImages:
        """The images at positions ``keep`` (classes unchanged)."""
        return LabelledImages(
            self.root,
            [self.paths[i] for i in keep],
            [self.targets[i] for i in keep],
            list(self.classes),
            list(self.skipped),
            list(self.empty_classes),
        )


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _visible(name: str) -> bool:
    return not name.startswith((".", "_"))


def _walk_images(folder: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for name in sorted(filenames):
            if _visible(name) and is_image_name(name):
                yield Path(dirpath) / name


def expand_paths(inputs: Sequence[str | Path]) -> tuple[list[Path], list[SkippedFile]]:
    """Files as given, folders searched recursively for images, globs expanded; order kept.

    A name that matches nothing is returned as a ``missing`` :class:`SkippedFile`. Files named
    explicitly are kept whatever their extension (decoding decides).
    """
    found: list[Path] = []
    missing: list[SkippedFile] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        if p not in seen:
            seen.add(p)
            found.append(p)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in _walk_images(path):
                add(p)
        elif path.exists():
            add(path)
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for p in _walk_images(mp):
                        add(p)
                elif is_image_name(mp):
                    add(mp)
            if not matches:
                missing.append(SkippedFile(str(item), "missing", "the pattern matches no file"))
        else:
            missing.append(SkippedFile(str(item), "missing", "no such file or folder"))
    return found, missing


def scan_dataset(source: str | Path, *, split: str | None = None) -> LabelledImages:
    """Read a class-folder tree or a CSV/JSONL manifest (``path,label[,split]``).

    ``split`` keeps only the manifest rows of that split. Paths in a manifest are relative to the
    manifest's folder unless absolute. Files listed but absent are recorded as ``missing``.
    """
    source = Path(source)
    if source.is_dir():
        manifest = source / "split.csv"
        if split is not None:
            if not manifest.is_file():
                raise DatasetError(f"--split {split} needs {manifest} (make one with `cnnlab split {source}`)")
            return _scan_manifest(manifest, split)
        return _scan_folders(source)
    if source.is_file():
        return _scan_manifest(source, split)
    raise DatasetError(f"no such folder or manifest: {source}")


def _scan_folders(root: Path) -> LabelledImages:
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and _visible(d.name))
    if not class_dirs:
        raise DatasetError(f"{root} has no class folders (expected {root}/<class>/<image files>)")
    classes = [d.name for d in class_dirs]
    paths: list[Path] = []
    targets: list[int] = []
    empty: list[str] = []
    for idx, d in enumerate(class_dirs):
        files = list(_walk_images(d))
        if not files:
            empty.append(d.name)
        paths.extend(files)
        targets.extend([idx] * len(files))
    return LabelledImages(root, paths, targets, classes, [], empty)


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows = []
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        rows.append({k: str(v) for k, v in json.loads(line).items() if v is not None})
                    except (json.JSONDecodeError, AttributeError) as exc:
                        raise DatasetError(f"{path}:{n}: not a JSON object ({exc})") from None
            return rows
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path} is not a UTF-8 text manifest: {exc}") from None


def _scan_manifest(path: Path, split: str | None) -> LabelledImages:
    rows = _read_manifest_rows(path)
    if rows and not {"path", "label"} <= set(rows[0]):
        raise DatasetError(f"{path} needs 'path' and 'label' columns; it has {sorted(rows[0])}")
    if split is not None:
        if rows and "split" not in rows[0]:
            raise DatasetError(f"{path} has no 'split' column")
        rows = [r for r in rows if r.get("split") == split]
        if not rows:
            raise DatasetError(f"{path} has no rows with split={split!r}")
    # a collect manifest holds every candidate; only 'ok' ones are images of the set
    rows = [r for r in rows if r.get("status", "ok") == "ok"]
    for n, r in enumerate(rows, 1):
        if not (r.get("path") or "").strip() or not (r.get("label") or "").strip():
            raise DatasetError(f"{path}: row {n} needs both a path and a label, got {dict(r)}")
    classes = sorted({r["label"] for r in rows})
    index = {c: i for i, c in enumerate(classes)}
    base = path.parent
    paths: list[Path] = []
    targets: list[int] = []
    skipped: list[SkippedFile] = []
    for r in rows:
        p = Path(r["path"])
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            skipped.append(SkippedFile(str(p), "missing", "listed in the manifest but not on disk", r["label"]))
            continue
        paths.append(p)
        targets.append(index[r["label"]])
    present = set(targets)
    empty = [c for i, c in enumerate(classes) if i not in present]
    return LabelledImages(base, paths, targets, classes, skipped, empty)
