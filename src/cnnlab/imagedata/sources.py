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

A shard's key may hold ``#`` (``shard.tar#a#b``: the container is the first part that is a ``.tar``); other keys
are row numbers. Everything stays map-style (a list of records read by index), so DataLoader workers and torchrun
ranks split the set by position and every image is read exactly once. Splits are the dataset's own (``val`` is
``validation``); folders of Parquet files or shards are split by their file names the way ``datasets`` reads them
(``train-00000-of-00002.parquet``) or by their split folders (``train/0.tar``). A label that names no class is
skipped (``bad-label``), not the set; a folder whose images and containers lie side by side is refused, not half read.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.errors import DatasetError, UsageError
from cnnlab.imagedata.hfdata import (
    SPLIT_ALIASES,
    check_label_type,
    choose_split,
    features_of,
    find_columns,
    load_arrow_dataset,
    parse_hf_name,
    quiet_datasets,
)
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
from cnnlab.imagedata.skipped import SkippedFile, printable


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


#: Folders that may hold a dataset's container files (``data/``, one folder per split) without being class folders.
_CONTAINER_FOLDERS: frozenset[str] = frozenset({"data", *(s for aliases in SPLIT_ALIASES.values() for s in aliases)})
#: The container files of each kind of source kept in folders.
_PATTERNS: dict[str, str] = {"shards": "*.tar", "parquet": "*.parquet"}
_WHAT: dict[str, str] = {"shards": "WebDataset shards", "parquet": "Parquet files"}


def record_kind(source: str | Path) -> str | None:
    """``hf``, ``saved``, ``parquet`` or ``shards`` when ``source`` names a record source; ``None`` for files,
    folders of images and manifests (which :func:`cnnlab.imagedata.datasets.scan_dataset` reads itself).

    A folder is a set of shards or Parquet files when its container files lie in it or in its split folders
    (``train/``, ``validation/``, ``data/``...) and it has no other visible folders; a class-folder tree stays one
    even with a stray archive or table beside its classes.

    Raises:
        DatasetError: a folder that holds both image files and container files (or both shards and Parquet files)
        where the containers would be read: which is meant is unclear, and neither is dropped silently.
    """
    text = str(source)
    if is_hf_name(text):
        return "hf"
    path = Path(text)
    if path.is_dir():
        return _folder_kind(path)
    suffix = path.suffix.lower()
    if _has_brace(text) or ((path.is_file() or _glob_magic(text)) and suffix == ".tar"):
        return "shards"
    if suffix == ".parquet" and (path.is_file() or _glob_magic(text)):
        return "parquet"
    return None


def _folder_kind(path: Path) -> str | None:
    if _is_saved_dataset(path):
        return "saved"
    try:
        folders = sorted(c.name for c in path.iterdir() if c.is_dir() and not c.name.startswith((".", "_")))
    except OSError:
        return None
    if not set(folders) <= _CONTAINER_FOLDERS:
        return None
    places = [path, *(path / name for name in folders)]
    found = {kind: next((f for place in places for f in sorted(place.glob(pattern)) if f.is_file()), None)
             for kind, pattern in _PATTERNS.items()}
    kinds = [kind for kind, file in found.items() if file is not None]
    if not kinds:
        return None
    if len(kinds) > 1:
        raise DatasetError(f"{path} holds both WebDataset shards (e.g. {found['shards']}) and Parquet files (e.g. "
                           f"{found['parquet']}): read one kind, as '{_pattern_of(found['shards'])}' or "
                           f"'{_pattern_of(found['parquet'])}'")
    kind = kinds[0]
    image = _image_among(places[0:1]) or _image_among(places[1:], nested=True)
    if image is not None:
        raise DatasetError(f"{path} holds image files (e.g. {image}) beside {_WHAT[kind]} (e.g. {found[kind]}): "
                           f"which to read is unclear; read the {_WHAT[kind]} as '{_pattern_of(found[kind])}' or the "
                           f"images as '{_pattern_of(image)}', or move one of them to a folder of its own")
    return kind


def _pattern_of(file: Path | None) -> str:
    """A glob for the files like ``file`` in its folder (``shards/*.tar``)."""
    assert file is not None
    return str(file.parent / ("*" + file.suffix))


def _image_among(places: list[Path], *, nested: bool = False, look: int | None = None) -> Path | None:
    """An image file directly in one of ``places`` (and, ``nested``, in one of their visible sub-folders: class
    folders under a split folder, looking at a bounded number of their entries: a cheap test, not a scan)."""
    import itertools

    from cnnlab.imagedata.filenames import is_image_name, is_junk_name

    for place in places:
        try:
            with os.scandir(place) as entries:
                subfolders = []
                for entry in itertools.islice(entries, look):
                    if is_junk_name(entry.name):
                        continue
                    if is_image_name(entry.name) and entry.is_file():
                        return Path(entry.path)
                    if nested and entry.is_dir() and not entry.name.startswith("_"):
                        subfolders.append(Path(entry.path))
        except OSError:
            continue
        found = _image_among(subfolders[:64], look=64) if subfolders else None
        if found is not None:
            return found
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
        if split:
            return []
        with quiet_datasets():
            return list(get_dataset_split_names(name, config))
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
            chosen = choose_split(names, split, source, lambda s: _split_alone(path, by_split, s))
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


def _split_alone(folder: Path, by_split: dict[str, list[Path]], split: str) -> str | None:
    """How to read one split of a folder of containers on its own: its own folder (``data/validation``) when it
    holds that split's files only, else a glob that matches exactly its files (``'data/validation-*.parquet'``)."""
    import glob

    files = by_split[split]
    others = [f for name, group in by_split.items() if name != split for f in group]
    parents = {f.parent for f in files}
    if len(parents) != 1:
        return None
    (parent,) = parents
    if parent != folder and not any(parent in f.parents for f in others) and _folder_kind(parent) is not None:
        return str(parent)
    prefix = os.path.commonprefix([f.stem for f in files])
    starts = [prefix[:i + 1] for i, char in enumerate(prefix) if char in "-_." and i > 0] + [prefix]
    for start in starts:  # the shortest that fits: train-*.parquet
        pattern = str(parent / (glob.escape(start) + "*" + files[0].suffix))
        if sorted(Path(m) for m in glob.glob(pattern)) == sorted(files):
            return f"'{pattern}'"
    return None


def _scan_shards(source: str, split: str | None, labelled: bool = True) -> Records:
    root, files = _pick_files(source, "*.tar", split)
    names: list[str] = []
    raw: list[int | str] = []
    skipped: list[SkippedFile] = []
    for shard in files:
        walk = walk_shard(shard)
        remember(str(shard), ShardContainer(str(shard), walk.images))
        skipped += walk.skipped
        for key in walk.images:
            name = f"{shard}{RECORD_SEP}{key}"
            label = walk.labels[key] if labelled else 0
            if label is None:
                skipped.append(SkippedFile(name, "missing",
                                           "no label: the sample has no .cls member and no .json member with a label"))
            elif isinstance(label, int) and label < 0:
                skipped.append(SkippedFile(name, "missing", f"unlabelled (class index {label}; a Hugging Face "
                                                            "dataset leaves -1 out the same way)"))
            else:
                names.append(name)
                raw.append(label)
    if not labelled:
        return Records(root, names, [0] * len(names), [], skipped)
    given = _class_names_of(files, root)
    classes, targets, bad = _classes_and_targets(raw, given[0] if given else None, source, names,
                                                 given[1] if given else "")
    return _without_bad(Records(root, names, targets, classes, skipped), bad)


def _class_names_of(files: list[Path], root: Path) -> tuple[list[str], str] | None:
    """The class names given beside the shards (``classes.txt``/``classes.json`` in a shard's folder or a folder
    above it, up to ``root``) and the file(s) that gave them; ``None`` when none are given."""
    from cnnlab.imagedata.shards import CLASS_FILES

    def beside(parent: Path) -> Path | None:
        folder = parent
        while True:
            if any((folder / name).is_file() for name in CLASS_FILES):
                return folder
            if folder == root or root not in folder.parents:
                return None
            folder = folder.parent

    where = {parent: beside(parent) for parent in sorted({f.parent for f in files})}
    found = {folder: class_names_beside(folder) for folder in sorted({f for f in where.values() if f is not None})}
    if not found:
        return None
    lonely = [parent for parent, folder in where.items() if folder is None]
    if lonely:
        raise DatasetError(f"the shards in {next(iter(found))} have class names beside them ({' or '.join(CLASS_FILES)})"
                           f" and those in {lonely[0]} none: give every folder of shards its class names, or none")
    (first, names), *rest = found.items()
    for folder, other in rest:
        if other != names:
            raise DatasetError(f"the class names beside the shards in {first} and in {folder} differ: read the "
                               "shards of one folder at a time, or give them the same names")
    files_named = [str(first / n) for n in CLASS_FILES if (first / n).is_file()]
    return list(names or []), " and ".join(files_named)


def _without_bad(records: Records, bad: dict[int, str]) -> Records:
    """``records`` less the positions in ``bad`` (a label that names no class), which are reported as skipped."""
    if not bad:
        return records
    skipped = records.skipped + [SkippedFile(records.names[i], "bad-label", detail) for i, detail in bad.items()]
    keep = [i for i in range(len(records.names)) if i not in bad]
    return Records(records.root, [records.names[i] for i in keep], [records.labels[i] for i in keep],
                   records.classes, skipped)


def _classes_and_targets(raw: list[int | str], names: list[str] | None, where: str, records: list[str],
                         names_from: str) -> tuple[list[str], list[int], dict[int, str]]:
    """Class names, class ids and the labels that name no class (position -> why) for raw labels: indices into
    ``names`` (given by ``names_from``) when given, or names among them; without ``names``, class names sorted,
    and indices their decimal names (``"0"``, ``"217"``: ImageNet indices for the mapping)."""
    if names is not None:
        index = {n: i for i, n in enumerate(names)}
        targets: list[int] = []
        bad: dict[int, str] = {}
        for position, label in enumerate(raw):
            if isinstance(label, int):
                if 0 <= label < len(names):
                    targets.append(label)
                    continue
                bad[position] = f"class index {label} is outside the {len(names)} class names of {names_from}"
            elif label in index:
                targets.append(index[label])
                continue
            else:
                bad[position] = f"the label {printable(label)!r} is none of the class names of {names_from}"
            targets.append(-1)
        return list(names), targets, bad
    if all(isinstance(x, int) for x in raw):
        ids = sorted(set(raw), key=int)
        position_of = {v: i for i, v in enumerate(ids)}
        return [str(v) for v in ids], [position_of[v] for v in raw], {}
    first_index = next((i for i, x in enumerate(raw) if isinstance(x, int)), None)
    if first_index is not None:
        first_name = next(i for i, x in enumerate(raw) if not isinstance(x, int))
        raise DatasetError(f"{where}: some labels are class names, others class indices ({records[first_name]} is "
                           f"{printable(str(raw[first_name]))!r}, {records[first_index]} is {raw[first_index]}): give "
                           "the class names in classes.txt or classes.json beside the shards")
    text = [str(x) for x in raw]
    classes = sorted(set(text))
    position_of = {c: i for i, c in enumerate(classes)}
    return classes, [position_of[t] for t in text], {}


def _labels_from_column(values: list[Any], feature: Any, where: str,
                        records: list[str]) -> tuple[list[str], list[int], list[int], dict[int, str]]:
    """(classes, targets, positions kept, bad labels by position among those kept) for a label column; ``-1`` and
    missing labels are left out."""
    from datasets import ClassLabel

    keep = [i for i, v in enumerate(values) if v is not None and not (isinstance(v, int) and v < 0)]
    raw = [values[i] for i in keep]
    kept_records = [records[i] for i in keep]
    if isinstance(feature, ClassLabel):
        classes, targets, bad = _classes_and_targets(raw, list(feature.names), where, kept_records,
                                                     "the ClassLabel feature")
    else:
        classes, targets, bad = _classes_and_targets(raw, None, where, kept_records, "")
    return classes, targets, keep, bad


def _scan_arrow_dataset(source: str, kind: str, split: str | None, image_column: str | None,
                        label_column: str | None, labelled: bool = True) -> Records:
    dataset, container_name = load_arrow_dataset(source, kind, split)
    image_col, label_col = find_columns(dataset.features, dataset.column_names, image_column, label_column,
                                         source, labelled)
    container = ArrowContainer.from_dataset(container_name, dataset, image_col)
    remember(container_name, container)
    if image_column is not None:
        remember_image_column(container_name, image_col)
    every = [f"{container_name}{RECORD_SEP}{i}" for i in range(len(dataset))]
    bad: dict[int, str] = {}
    if labelled:
        column = dataset.data.column(label_col)
        check_label_type(column.type, label_col, source)
        values = column.to_pylist()
        classes, targets, keep, bad = _labels_from_column(values, dataset.features.get(label_col), source, every)
    else:
        values, classes, targets, keep = [0] * len(dataset), [], [0] * len(dataset), list(range(len(dataset)))
    names = [every[i] for i in keep]
    kept = set(keep)
    skipped = [SkippedFile(every[i], "missing", "no label in this row") for i in range(len(values)) if i not in kept]
    records = _without_bad(Records(Path(), names, targets, classes, skipped), bad)
    names, targets, skipped = records.names, records.labels, records.skipped
    missing = container.rows_without_image()
    if missing:
        gone = {every[i] for i in missing}
        skipped += [SkippedFile(name, "empty", "no image in this row") for name in names if name in gone]
        pairs = [(n, t) for n, t in zip(names, targets) if n not in gone]
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
        check_label_type(schema.field(label_col).type, label_col, str(file))
        values = pq.read_table(file, columns=[label_col]).column(0).to_pylist()
        feature = (features or {}).get(label_col) if feature is None else feature
        for row, value in enumerate(values):
            raw_all.append((f"{file}{RECORD_SEP}{row}", value))
    if not labelled:
        return Records(root, [name for name, _ in raw_all], [0] * len(raw_all), [], [])
    every = [name for name, _ in raw_all]
    classes, targets, keep, bad = _labels_from_column([v for _, v in raw_all], feature, source, every)
    kept = set(keep)
    names = [every[i] for i in keep]
    skipped = [SkippedFile(every[i], "missing", "no label in this row") for i in range(len(raw_all)) if i not in kept]
    return _without_bad(Records(root, names, targets, classes, skipped), bad)
