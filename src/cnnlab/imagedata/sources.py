"""Image sets stored as records: Hugging Face datasets, Parquet files and WebDataset shards, listed with their labels.

:func:`scan_records` turns one of them into a list of record names with class ids (what
:func:`cnnlab.imagedata.datasets.scan_dataset` hands on as a :class:`~cnnlab.imagedata.datasets.LabelledImages`). A
record's name serves as its "path" everywhere a file path goes (reports, CSVs, skipped-file records, the bench
workers' requests), and :mod:`cnnlab.imagedata.records` reads its bytes:

* ``shards/train-000003.tar#n01440764_10026``: the sample with key ``n01440764_10026`` of a tar shard
  (its ``.jpg``/``.jpeg``/``.png``/``.webp`` member: :mod:`cnnlab.imagedata.shards`);
* ``hf:beans/validation#12``: row 12 of a split of a Hugging Face dataset (``datasets.load_dataset``, so
  ``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_DATASETS_CACHE`` apply as datasets applies them);
* ``saved/validation#12``: row 12 of a dataset folder written by ``save_to_disk``;
* ``data/train-00000-of-00002.parquet#12``: row 12 of a Parquet file.

Everything stays map-style (a list of records read by index), so DataLoader workers and torchrun ranks split the
set by position and every image is read exactly once. Splits are the dataset's own (``val`` is ``validation``);
folders of Parquet files or shards are split by their file names the way ``datasets`` reads them
(``train-00000-of-00002.parquet``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import DatasetError, UsageError
from cnnlab.imagedata.hfdata import SPLIT_ALIASES, choose_split, features_of, find_columns, load_arrow_dataset, parse_hf_name
from cnnlab.imagedata.records import (
    RECORD_SEP,
    ArrowContainer,
    ParquetContainer,
    ShardContainer,
    is_hf_name,
    remember,
    remember_image_column,
)
from cnnlab.imagedata.shards import class_names_beside, walk_shard
from cnnlab.imagedata.skipped import SkippedFile


@dataclass
class Records:
    """What a scan of a record source found: one entry per usable record, in the source's order."""

    root: Path
    names: list[str]
    labels: list[int]
    classes: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------------------------
# recognising a source


def _is_saved_dataset(folder: Path) -> bool:
    return folder.is_dir() and ((folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file())


def _has_brace(text: str) -> bool:
    return bool(re.search(r"\{[^}]*\.\.[^}]*\}", text))


def record_kind(source: str | Path) -> str | None:
    """``hf``, ``saved``, ``parquet`` or ``shards`` when ``source`` names a record source; ``None`` for files,
    folders of images and manifests (which :func:`cnnlab.imagedata.datasets.scan_dataset` reads itself)."""
    text = str(source)
    if is_hf_name(text):
        return "hf"
    path = Path(text)
    if path.is_dir():
        if _is_saved_dataset(path):
            return "saved"
        # a class-folder tree stays one even with a stray archive or table beside its classes
        split_folders = {"data", *(s for aliases in SPLIT_ALIASES.values() for s in aliases)}
        try:
            folders = {c.name for c in path.iterdir() if c.is_dir() and not c.name.startswith((".", "_"))}
        except OSError:
            return None
        if any(path.glob("*.tar")) and not folders:
            return "shards"
        places = [path, *(path / s for s in sorted(split_folders))]
        if folders <= split_folders and any(any(place.glob("*.parquet")) for place in places if place.is_dir()):
            return "parquet"
        return None
    suffix = path.suffix.lower()
    if _has_brace(text) or ((path.is_file() or _glob_magic(text)) and suffix == ".tar"):
        return "shards"
    if suffix == ".parquet" and (path.is_file() or _glob_magic(text)):
        return "parquet"
    return None


def _glob_magic(text: str) -> bool:
    import glob

    return glob.has_magic(text)


# ---------------------------------------------------------------------------------------------------------------
# scanning (the main process): labels, classes, the list of records


def scan_records(
    source: str | Path,
    *,
    split: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    labelled: bool = True,
) -> Records:
    """Read the labels of a record source (no image is decoded) and list its records.

    ``split`` picks one of the dataset's splits: ``train``, ``val`` (``validation``, ``valid``, ``dev``) or
    ``test``, or any split name the dataset has. ``labelled=False`` lists every record with an image, labelled
    or not (what ``predict`` needs; ``labels`` are then all 0 and ``classes`` empty). Raises
    :class:`DatasetError` for a source that cannot be read.
    """
    kind = record_kind(source)
    require_extra(kind)
    if kind == "shards":
        return _scan_shards(str(source), split, labelled)
    if kind in ("hf", "saved"):
        return _scan_arrow_dataset(str(source), kind, split, image_column, label_column, labelled)
    if kind == "parquet":
        return _scan_parquet(str(source), split, image_column, label_column, labelled)
    raise DatasetError(f"{source} is not a Hugging Face dataset, a Parquet file or a set of WebDataset shards")


#: The packages each kind of source needs, and the extra that brings them.
_EXTRAS: dict[str, tuple[tuple[str, ...], str]] = {
    "shards": (("webdataset",), "wds"),
    "hf": (("datasets", "pyarrow"), "hf"),
    "saved": (("datasets", "pyarrow"), "hf"),
    "parquet": (("datasets", "pyarrow"), "hf"),
}


def require_extra(kind: str | None) -> None:
    """Raise :class:`UsageError` naming the extra to install unless the packages that read ``kind`` import."""
    import importlib.util

    if kind not in _EXTRAS:
        return
    modules, extra = _EXTRAS[kind]
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        what = {"shards": "WebDataset shards", "parquet": "Parquet files"}.get(kind, "Hugging Face datasets")
        raise UsageError(f"reading {what} needs {' and '.join(missing)}: pip install 'cnnlab[{extra}]'")


def dataset_splits(source: str | Path) -> list[str]:
    """The split names a record source has (``[]`` when it is one set without splits)."""
    kind = record_kind(source)
    require_extra(kind)
    if kind == "hf":
        from datasets import get_dataset_split_names

        name, config, split = parse_hf_name(str(source))
        return [] if split else list(get_dataset_split_names(name, config))
    if kind == "saved":
        folder = Path(source)
        if (folder / "dataset_dict.json").is_file():
            return list(json.loads((folder / "dataset_dict.json").read_text()).get("splits", []))
        return []
    if kind in ("shards", "parquet") and Path(source).is_dir():
        return [s for s in _files_by_split(Path(source), "*.tar" if kind == "shards" else "*.parquet") if s]
    return []





def _files_by_split(folder: Path, pattern: str) -> dict[str, list[Path]]:
    """The files under ``folder`` matching ``pattern``, by split, named the way ``datasets`` names them: a split
    word (``train``, ``validation``/``valid``/``dev``/``val``, ``test``/``eval``) between separators in the file's
    path (``train-00000-of-00002.parquet``, ``data/validation-000001.tar``, ``test/0.tar``); ``{"": files}`` when
    the names say no split."""
    files = sorted(p for p in folder.rglob(pattern) if p.is_file() and not any(part.startswith(".") for part in
                                                                                 p.relative_to(folder).parts))
    by_split: dict[str, list[Path]] = {}
    for file in files:
        rel = "/" + file.relative_to(folder).as_posix()
        split = next((name for name, words in _SPLIT_WORDS for word in words
                      if re.search(rf"[-._ 0-9/]{word}[-._ 0-9/]", rel)), "")
        by_split.setdefault(split, []).append(file)
    if "" in by_split and len(by_split) > 1:
        odd = by_split[""][0].relative_to(folder)
        raise DatasetError(f"{folder}: some files name a split and some do not (e.g. {odd}); name every file's "
                           "split or none")
    return by_split


#: The words that name a split in file names, as ``datasets`` reads them (its canonical name first).
_SPLIT_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("train", ("train", "training")),
    ("validation", ("validation", "valid", "dev", "val")),
    ("test", ("test", "testing", "eval")),
)


def _pick_files(source: str, pattern: str, split: str | None) -> tuple[Path, list[Path]]:
    """The container files of a folder, a file, a glob or a brace pattern, and their common folder."""
    import glob

    path = Path(source)
    if path.is_dir():
        by_split = _files_by_split(path, pattern)
        if not by_split:
            raise DatasetError(f"{source} holds no {pattern} files")
        names = [s for s in by_split if s]
        if names:
            chosen = choose_split(names, split, source)
            return path, by_split[chosen or names[0]]
        if split is not None:
            raise DatasetError(f"{source} has no splits (its file names name none); leave split out")
        return path, by_split[""]
    if _has_brace(source):
        from webdataset.shardlists import expand_urls

        files = [Path(u) for u in expand_urls(source)]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DatasetError(f"{source}: {len(missing)} of {len(files)} shards are missing (e.g. {missing[0]})")
    elif _glob_magic(source):
        files = [Path(m) for m in sorted(glob.glob(source, recursive=True)) if Path(m).is_file()]
        if not files:
            raise DatasetError(f"{source}: the pattern matches no file")
    elif path.is_file():
        files = [path]
    else:
        raise DatasetError(f"no such file or folder: {source}")
    if split is not None:
        raise DatasetError(f"{source}: split applies to a folder or a named dataset; name its files instead")
    return Path(os.path.commonpath([str(f.parent) for f in files])), files


def _scan_shards(source: str, split: str | None, labelled: bool = True) -> Records:
    root, files = _pick_files(source, "*.tar", split)
    names: list[str] = []
    raw: list[int | str] = []
    skipped: list[SkippedFile] = []
    for shard in files:
        index, labels, repeated = walk_shard(shard)
        remember(str(shard), ShardContainer(str(shard), index))
        for key in repeated:
            skipped.append(SkippedFile(f"{shard}{RECORD_SEP}{key}", "duplicate",
                                       "a second image member with this key; the first one is used"))
        for key in index:
            label = labels[key] if labelled else 0
            if label is None:
                skipped.append(SkippedFile(f"{shard}{RECORD_SEP}{key}", "missing",
                                           "no label: the sample has no .cls member and no .json member with a label"))
                continue
            names.append(f"{shard}{RECORD_SEP}{key}")
            raw.append(label)
    if not labelled:
        return Records(root, names, [0] * len(names), [], skipped)
    beside = class_names_beside(files[0].parent) if files else None
    classes, targets = _classes_and_targets(raw, beside, source)
    return Records(root, names, targets, classes, skipped)


def _classes_and_targets(raw: list[int | str], names: list[str] | None, where: str) -> tuple[list[str], list[int]]:
    """Class names and class ids for raw labels: indices into ``names`` when given; class names sorted;
    indices without names become their decimal names (``"0"``, ``"217"``: ImageNet indices for the mapping)."""
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        targets = []
        for label in raw:
            if isinstance(label, int):
                if not 0 <= label < len(names):
                    raise DatasetError(f"{where}: class index {label} is outside the {len(names)} class names given")
                targets.append(label)
            elif label in index:
                targets.append(index[label])
            else:
                raise DatasetError(f"{where}: label {label!r} is not one of the class names given")
        return list(names), targets
    if all(isinstance(x, int) for x in raw):
        ids = sorted(set(raw), key=int)
        position = {v: i for i, v in enumerate(ids)}
        return [str(v) for v in ids], [position[v] for v in raw]
    indices = [x for x in raw if isinstance(x, int)]
    if indices:
        raise DatasetError(f"{where}: some labels are class names, others class indices (e.g. class index "
                           f"{indices[0]}): give the class names in classes.txt or classes.json beside the shards")
    text = [str(x) for x in raw]
    classes = sorted(set(text))
    position = {c: i for i, c in enumerate(classes)}
    return classes, [position[t] for t in text]


def _labels_from_column(values: list[Any], feature: Any, where: str) -> tuple[list[str], list[int], list[int]]:
    """(classes, targets, positions kept) for a label column; ``-1`` and missing labels are left out."""
    from datasets import ClassLabel

    keep = [i for i, v in enumerate(values) if v is not None and not (isinstance(v, int) and v < 0)]
    raw = [values[i] for i in keep]
    if isinstance(feature, ClassLabel):
        classes, targets = _classes_and_targets(raw, list(feature.names), where)
    else:
        classes, targets = _classes_and_targets([v if isinstance(v, (int, str)) else str(v) for v in raw], None,
                                                where)
    return classes, targets, keep


def _scan_arrow_dataset(source: str, kind: str, split: str | None, image_column: str | None,
                        label_column: str | None, labelled: bool = True) -> Records:
    dataset, container_name = load_arrow_dataset(source, kind, split)
    image_col, label_col = find_columns(dataset.features, dataset.column_names, image_column, label_column,
                                         source, labelled)
    container = ArrowContainer.from_dataset(container_name, dataset, image_col)
    remember(container_name, container)
    if image_column is not None:
        remember_image_column(container_name, image_col)
    if labelled:
        values = dataset.data.column(label_col).to_pylist()
        classes, targets, keep = _labels_from_column(values, dataset.features.get(label_col), source)
    else:
        values, classes, targets, keep = [0] * len(dataset), [], [0] * len(dataset), list(range(len(dataset)))
    names = [f"{container_name}{RECORD_SEP}{i}" for i in keep]
    kept = set(keep)
    skipped = [SkippedFile(f"{container_name}{RECORD_SEP}{i}", "missing", "no label in this row")
               for i in range(len(values)) if i not in kept]
    missing = container.rows_without_image()
    if missing:
        gone = set(missing)
        skipped += [SkippedFile(f"{container_name}{RECORD_SEP}{i}", "empty", "no image in this row") for i in missing
                    if i in kept]
        pairs = [(n, t) for n, t, i in zip(names, targets, keep) if i not in gone]
        names, targets = [n for n, _ in pairs], [t for _, t in pairs]
    # a hub dataset's folder is its Arrow cache (where review may keep its own cache), not a name in this folder
    root = Path(container.files[0]).parent if kind == "hf" else Path(container_name)
    return Records(root, names, targets, classes, skipped)


def _scan_parquet(source: str, split: str | None, image_column: str | None, label_column: str | None,
                  labelled: bool = True) -> Records:
    import pyarrow.parquet as pq

    root, files = _pick_files(source, "*.parquet", split)
    raw_all: list[tuple[str, Any]] = []
    feature = None
    for file in files:
        try:
            schema = pq.read_schema(file)
        except Exception as exc:  # noqa: BLE001 - any unreadable file
            raise DatasetError(f"{file} is not a readable Parquet file: {exc}") from None
        features = features_of(schema)
        image_col, label_col = find_columns(features, schema.names, image_column, label_column, str(file), labelled)
        container = ParquetContainer(str(file), image_col)
        remember(str(file), container)
        if image_column is not None:
            remember_image_column(str(file), image_col)
        if not labelled:
            raw_all += [(f"{file}{RECORD_SEP}{row}", 0) for row in range(container.starts[-1])]
            continue
        values = pq.read_table(file, columns=[label_col]).column(0).to_pylist()
        feature = (features or {}).get(label_col) if feature is None else feature
        for row, value in enumerate(values):
            raw_all.append((f"{file}{RECORD_SEP}{row}", value))
    if not labelled:
        return Records(root, [name for name, _ in raw_all], [0] * len(raw_all), [], [])
    classes, targets, keep = _labels_from_column([v for _, v in raw_all], feature, source)
    kept = set(keep)
    names = [raw_all[i][0] for i in keep]
    skipped = [SkippedFile(raw_all[i][0], "missing", "no label in this row") for i in range(len(raw_all))
               if i not in kept]
    return Records(root, names, targets, classes, skipped)
