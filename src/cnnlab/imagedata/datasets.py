"""Finding images: folders, globs, class-folder trees and manifests.

* :func:`expand_paths` turns files, folders (recursive) and globs into a list of image files.
* :func:`scan_dataset` reads a labelled set: a class-folder tree (``DIR/<class>/*.jpg``, like
  torchvision's ImageFolder) or a manifest (CSV or JSONL with ``path`` and ``label`` columns and an
  optional ``split`` column, e.g. the ``split.csv`` that ``cnnlab split`` writes).

How folders are walked (the same for predict, bench, train and split):

* every real file is used once: symbolic links to folders are followed, but a link back to a folder
  being walked (a loop, e.g. ``ln -s .. data/cat/loop``) is not followed and is reported as
  ``symlink-loop``; a file reached twice through links counts once;
* only hidden names (a leading ``.``) and what operating systems leave behind (``__MACOSX``,
  ``Thumbs.db``, ``desktop.ini``, ...) are skipped; camera names such as ``_DSC0001.JPG`` are images.
  At the top of a class-folder tree, folders starting with ``_`` (``_trash``) are not classes;
* a folder that cannot be read, and an image name that is not a regular file (a FIFO, a device, a
  broken link), are reported as skipped files instead of being passed over silently.

Feeding the images to a model is :mod:`cnnlab.runtime.inference`'s job.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import DatasetError
from cnnlab.imagedata.filenames import IMAGE_EXTENSIONS as IMAGE_EXTENSIONS
from cnnlab.imagedata.filenames import JUNK_NAMES as JUNK_NAMES
from cnnlab.imagedata.filenames import is_image_name as is_image_name
from cnnlab.imagedata.filenames import is_junk_name as is_junk_name
from cnnlab.imagedata.skipped import SkippedFile

#: The splits a manifest's ``split`` column may name (case-insensitive: ``Val`` is ``val``).
SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")


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


def _is_class_folder_name(name: str) -> bool:
    return not is_junk_name(name) and not name.startswith("_")


def _real(path: str | Path) -> str:
    """The resolved path (symbolic links followed; a looping link is returned as far as it resolves)."""
    return os.path.realpath(path)


def _within(path: str, folder: str) -> bool:
    """``path`` is ``folder`` or inside it (both resolved)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _not_a_file(path: str | Path) -> SkippedFile | None:
    """A record for an image name that is not a regular file (FIFO, device, socket, broken or looping link)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        if os.path.islink(path):
            return SkippedFile(str(path), "missing", f"a symbolic link that leads nowhere ({exc.strerror or exc})")
        return SkippedFile(str(path), "missing", str(exc.strerror or exc))
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        kind = "a folder"
    elif stat.S_ISFIFO(mode):
        kind = "a FIFO"
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = "a device"
    else:
        kind = "a socket"
    return SkippedFile(str(path), "not-a-file", f"{kind}, not a regular file")


def _walk_real(folder: Path, problems: list[SkippedFile], root: Path | None = None) -> Iterator[tuple[Path, str]]:
    """Image files under ``folder`` with their resolved paths, depth first, sorted by name at each
    level; each real folder once.

    Links to folders are followed unless they lead back into a folder already walked or to ``root``
    (default ``folder``) or above it: those are loops and are reported in ``problems``, as are folders
    that cannot be read and image names that are not regular files. Resolved paths are computed
    only for links (the walk costs no more system calls than ``os.walk``).
    """
    root_real = _real(root if root is not None else folder)
    visited: set[str] = set()
    stack = [(str(folder), _real(folder))]
    while stack:
        dirpath, real = stack.pop()
        visited.add(real)
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(SkippedFile(dirpath, "unreadable", f"folder not read: {exc.strerror or exc}"))
            continue
        subdirs: list[tuple[str, str]] = []
        for entry in entries:
            if is_junk_name(entry.name):
                continue
            try:  # both follow links; for plain files and folders they cost no system call
                is_file = entry.is_file()
                is_dir = not is_file and entry.is_dir()
            except OSError:
                is_file = is_dir = False
            if not is_dir:
                if not is_image_name(entry.name):
                    continue
                if is_file:
                    yield Path(entry.path), _real(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
                else:
                    problems.append(_not_a_file(entry.path) or SkippedFile(entry.path, "not-a-file", "not a regular file"))
                continue
            sub_real = _real(entry.path) if entry.is_symlink() else os.path.join(real, entry.name)
            if _within(root_real, sub_real) or _within(real, sub_real):
                problems.append(SkippedFile(entry.path, "symlink-loop",
                                            f"links back to {sub_real}, which contains it; not followed"))
            elif sub_real in visited:
                problems.append(SkippedFile(entry.path, "duplicate", f"the same folder as {sub_real}; walked once"))
            else:
                visited.add(sub_real)
                subdirs.append((entry.path, sub_real))
        stack.extend(reversed(subdirs))


def expand_paths(inputs: Sequence[str | Path], *, image_column: str | None = None) -> tuple[list[Path], list[SkippedFile]]:
    """Files as given, folders searched recursively for images, globs expanded; order kept.

    A dataset stored as records (a Hugging Face dataset, Parquet files, WebDataset shards:
    :func:`scan_dataset`) gives all its records with an image, as record names (``shard.tar#KEY``).

    Returns the files and the records of what was skipped: a name that matches nothing
    (``missing``), folder loops, unreadable folders and image names that are not regular files.
    Files named explicitly are kept whatever their extension (decoding decides). A file reached
    twice (named twice, or through a link) is used once.
    """
    found: list[Path] = []
    skipped: list[SkippedFile] = []
    seen: set[str] = set()

    def add(p: Path, key: str | None = None) -> None:
        key = key or _real(p)
        if key not in seen:
            seen.add(key)
            found.append(p)

    from cnnlab.imagedata.sources import record_kind, scan_records

    for item in inputs:
        path = Path(item)
        if record_kind(item) is not None:  # a dataset of records: every record with an image, labelled or not
            found_records = scan_records(item, image_column=image_column, labelled=False)
            for name in found_records.names:
                add(Path(name), name)
            skipped.extend(found_records.skipped)
        elif path.is_dir():
            for p, key in _walk_real(path, skipped):
                add(p, key)
        elif path.exists():
            add(path)
        elif glob.has_magic(str(item)):
            matches = sorted(glob.glob(str(item), recursive=True))
            for m in matches:
                mp = Path(m)
                if mp.is_dir():
                    for p, key in _walk_real(mp, skipped):
                        add(p, key)
                elif is_image_name(mp) and not is_junk_name(mp.name):
                    add(mp)
            if not matches:
                skipped.append(SkippedFile(str(item), "missing", "the pattern matches no file"))
        elif path.is_symlink():
            skipped.append(SkippedFile(str(item), "missing", "a symbolic link that leads nowhere (or to itself)"))
        else:
            skipped.append(SkippedFile(str(item), "missing", "no such file or folder"))
    return found, skipped


def scan_dataset(
    source: str | Path,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
) -> LabelledImages:
    """Read a class-folder tree, a CSV/JSONL manifest (``path,label[,split]``), or a dataset stored as records.

    Records (:mod:`cnnlab.imagedata.sources`): a Hugging Face dataset (``hf:NAME[:CONFIG][/SPLIT]``), a folder
    written by ``save_to_disk``, Parquet files (a file, a folder of them, a glob) or WebDataset shards (a brace
    pattern ``train-{000000..000009}.tar``, a folder of ``.tar``, a glob). Their "paths" are record names
    (``shard.tar#KEY``, ``hf:name/split#ROW``, ``file.parquet#ROW``) that every reader of images accepts;
    ``image_column`` and ``label_column`` name the columns of a Hugging Face dataset or Parquet file (by default
    its ``Image`` and ``ClassLabel`` features); ``split`` picks one of the dataset's own splits (``val`` is
    ``validation``).

    ``split`` keeps only the manifest rows of that split (``train``, ``val`` or ``test``; case does not
    matter, in the argument or in the file). Paths in a manifest are relative to the manifest's folder
    unless absolute; a manifest may list files outside its folder (``../other/x.jpg``,
    ``/data/x.jpg``): it is a list the user chose, and only regular files are ever read from it. It may also list
    records of datasets (``shards/train-000001.tar#KEY``, ``hf:beans/validation#12``), as ``cnnlab train``'s
    ``data_split.csv`` does for a run on such a dataset.

    Every real file counts once: a file listed twice (or reached twice through links) with the same
    label is used once and the repeat recorded as a ``duplicate``; with two different labels it is a
    :class:`DatasetError` that names both rows (or both paths). Files listed but absent are recorded
    as ``missing``.
    """
    from cnnlab.imagedata.sources import record_kind

    if record_kind(source) is not None:
        return _scan_records(source, split, image_column, label_column)
    if image_column is not None or label_column is not None:
        raise DatasetError(f"{source} is a folder or manifest: image and label columns apply to Hugging Face "
                           "datasets and Parquet files")
    source = Path(source)
    if split is not None:
        split = _split_name(split, "split")
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


def _scan_records(source: str | Path, split: str | None, image_column: str | None,
                  label_column: str | None) -> LabelledImages:
    from cnnlab.imagedata.sources import scan_records

    found = scan_records(source, split=split, image_column=image_column, label_column=label_column)
    present = set(found.labels)
    return LabelledImages(
        found.root,
        [Path(name) for name in found.names],
        list(found.labels),
        list(found.classes),
        list(found.skipped),
        [c for i, c in enumerate(found.classes) if i not in present],
    )


def _split_name(value: str, where: str) -> str:
    name = value.strip().lower()
    if name not in SPLIT_NAMES:
        raise DatasetError(f"{where}: split {value!r} is not one of {', '.join(SPLIT_NAMES)}")
    return name


def _scan_folders(root: Path) -> LabelledImages:
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise DatasetError(f"cannot read the folder {root}: {exc.strerror or exc}") from None
    class_dirs = [d for d in entries if _is_class_folder_name(d.name) and d.is_dir()]
    if not class_dirs:
        raise DatasetError(f"{root} has no class folders (expected {root}/<class>/<image files>)")
    classes = [d.name for d in class_dirs]
    root_real = _real(root)
    paths: list[Path] = []
    targets: list[int] = []
    empty: list[str] = []
    skipped: list[SkippedFile] = []
    owner: dict[str, tuple[int, Path]] = {}  # real file -> (class, first path)
    for idx, d in enumerate(class_dirs):
        count = 0
        if _within(root_real, _real(d)):
            skipped.append(SkippedFile(str(d), "symlink-loop", f"links to {_real(d)}, which contains the dataset"))
        else:
            for p, key in _walk_real(d, skipped, root=root):
                first = owner.get(key)
                if first is None:
                    owner[key] = (idx, p)
                    paths.append(p)
                    targets.append(idx)
                    count += 1
                elif first[0] == idx:
                    skipped.append(SkippedFile(str(p), "duplicate", f"the same file as {first[1]}; counted once",
                                               classes[idx]))
                else:
                    raise DatasetError(
                        f"{key} is in class {classes[first[0]]!r} (as {first[1]}) and in class {classes[idx]!r} "
                        f"(as {p}): a file can have one label; remove one of the links"
                    )
        if not count:
            empty.append(d.name)
    return LabelledImages(root, paths, targets, classes, skipped, empty)


def _read_manifest_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV or JSONL manifest (see :func:`_read_numbered_rows`)."""
    return [row for _, row in _read_numbered_rows(path)]


def _read_numbered_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    """``(line number, row)`` pairs of a CSV or JSONL manifest.

    The file is UTF-8, with or without a byte-order mark (Excel's "CSV UTF-8"); bytes that are not
    UTF-8 are kept as they are (surrogate escapes), so file names that ``cnnlab split`` wrote from a
    non-UTF-8 file system read back as the same names. A CSV row with more fields than the header,
    a JSONL line that is not an object, and a ``split`` value other than train/val/test (any case)
    are errors naming the line.
    """
    try:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            rows: list[tuple[int, dict[str, str]]] = []
            text = path.read_text(encoding="utf-8-sig", errors="surrogateescape")
            for n, line in enumerate(text.splitlines(), 1):
                if line.strip():
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}:{n}: not a JSON object ({exc})") from None
                    if not isinstance(obj, dict):
                        raise DatasetError(f"{path}:{n}: not a JSON object (a {type(obj).__name__})")
                    rows.append((n, {str(k): str(v) for k, v in obj.items() if v is not None}))
        else:
            with path.open(newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
                reader = csv.DictReader(fh)
                rows = []
                for row in reader:
                    n = reader.line_num
                    if None in row:
                        width = len(reader.fieldnames or [])
                        raise DatasetError(
                            f"{path}:{n}: this row has {width + len(row[None])} fields but the header has {width} "
                            "(quote a path or label that contains a comma)"
                        )
                    rows.append((n, {k: v for k, v in row.items() if v is not None}))
    except csv.Error as exc:
        raise DatasetError(f"{path} is not a readable CSV file: {exc}") from None
    except OSError as exc:
        raise DatasetError(f"cannot read the manifest {path}: {exc.strerror or exc}") from None
    for n, row in rows:
        if "split" in row:
            row["split"] = _split_name(row["split"], f"{path}:{n}")
    return rows


def _scan_manifest(path: Path, split: str | None) -> LabelledImages:
    from cnnlab.imagedata.records import is_hf_name, is_record

    numbered = _read_numbered_rows(path)
    if numbered and not {"path", "label"} <= set(numbered[0][1]):
        raise DatasetError(f"{path} needs 'path' and 'label' columns; it has {sorted(numbered[0][1])}")
    if split is not None:
        if numbered and "split" not in numbered[0][1]:
            raise DatasetError(f"{path} has no 'split' column")
        numbered = [(n, r) for n, r in numbered if r.get("split") == split]
        if not numbered:
            raise DatasetError(f"{path} has no rows with split={split!r}")
    # a collect manifest holds every candidate, and a later line about the same (class, url) replaces an
    # earlier one (a file quarantined by `cnnlab review`, or removed by hand); only 'ok' ones are images
    if numbered and "url" in numbered[0][1] and "status" in numbered[0][1]:
        latest = {(r.get("label"), r.get("url")): (n, r) for n, r in numbered if r.get("url")}
        numbered = sorted(latest.values(), key=lambda item: item[0]) + [(n, r) for n, r in numbered if not r.get("url")]
    numbered = [(n, r) for n, r in numbered if r.get("status", "ok") == "ok"]
    for n, r in numbered:
        if not (r.get("path") or "").strip() or not (r.get("label") or "").strip():
            raise DatasetError(f"{path}:{n}: a row needs both a path and a label, got {dict(r)}")
    classes = sorted({r["label"] for _, r in numbered})
    index = {c: i for i, c in enumerate(classes)}
    base = path.parent
    paths: list[Path] = []
    targets: list[int] = []
    skipped: list[SkippedFile] = []
    first_row: dict[str, tuple[int, str]] = {}  # real file -> (line, label)
    for n, r in numbered:
        p = Path(r["path"])
        p = p if p.is_absolute() or is_hf_name(r["path"]) else base / p
        key = r["path"] if is_hf_name(r["path"]) else _real(p)
        seen = first_row.get(key)
        if seen is not None:
            if seen[1] != r["label"]:
                raise DatasetError(
                    f"{path}: lines {seen[0]} and {n} give {p} two labels ({seen[1]!r} and {r['label']!r}); "
                    "a file can have one label"
                )
            skipped.append(SkippedFile(str(p), "duplicate", f"line {n} repeats line {seen[0]}; counted once", r["label"]))
            continue
        first_row[key] = (n, r["label"])
        if is_record(p):  # a record of a dataset (shard.tar#KEY, hf:name/split#ROW): read from its container
            paths.append(p)
            targets.append(index[r["label"]])
            continue
        if not os.path.lexists(p):
            skipped.append(SkippedFile(str(p), "missing", "listed in the manifest but not on disk", r["label"]))
            continue
        problem = _not_a_file(p)
        if problem is not None:
            skipped.append(SkippedFile(problem.path, problem.reason, problem.detail, r["label"]))
            continue
        paths.append(p)
        targets.append(index[r["label"]])
    present = set(targets)
    empty = [c for i, c in enumerate(classes) if i not in present]
    return LabelledImages(base, paths, targets, classes, skipped, empty)
