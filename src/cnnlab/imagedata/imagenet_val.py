"""ImageNet's validation set in the layouts it is distributed in, and the ImageNet-ReaL relabelling.

* A folder of 1000 wnid class folders is an ordinary class-folder tree (:func:`cnnlab.imagedata.datasets.scan_dataset`).
* A *flat* folder of ``ILSVRC2012_val_00000001.JPEG`` ... files needs a ground-truth file, read by
  :func:`read_ground_truth`:

  - Kaggle's ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first token of the
    prediction string is the wnid);
  - the ILSVRC2012 devkit's ``ILSVRC2012_validation_ground_truth.txt`` (one ILSVRC2012_ID per line,
    line *i* for image *i*), with the devkit's ``meta.mat`` beside it (it maps ILSVRC2012_IDs, which
    are *not* class indices, to wnids) — or the devkit folder itself;
  - a CSV with ``path`` (or ``file``/``filename``/``ImageId``) and ``label`` (or ``wnid``) columns.

* ``real.json`` (Beyer et al., 2020, "Are we done with ImageNet?") holds, for image *i* in file order,
  the list of ImageNet class indices that are correct for it; an empty list means the raters found
  no correct class, and such images are left out of ReaL accuracy (and counted). :func:`read_real_labels`
  keys it by file name, as timm's ``RealLabelsImagenet`` does.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import LabelledImages, SkippedFile, is_image_name

_VAL_NUMBER = re.compile(r"ILSVRC2012_val_(\d{8})", re.IGNORECASE)
_WNID = re.compile(r"^n\d{8}$")
_DEVKIT_TRUTH = "ILSVRC2012_validation_ground_truth.txt"


def val_index(name: str) -> int | None:
    """0-based position of ``ILSVRC2012_val_00000001.JPEG`` (-> 0) in the validation set; ``None`` otherwise."""
    match = _VAL_NUMBER.search(name)
    return int(match.group(1)) - 1 if match else None


def _stem(name: str) -> str:
    return Path(name).name.rsplit(".", 1)[0] if "." in Path(name).name else Path(name).name


def read_ground_truth(path: str | Path) -> dict[str, str]:
    """``{file stem: wnid}`` from any of the ground-truth formats in the module docstring."""
    path = Path(path)
    if path.is_dir():  # the devkit folder
        found = sorted(path.rglob(_DEVKIT_TRUTH))
        if not found:
            raise DatasetError(f"{path} holds no {_DEVKIT_TRUTH} (expected the ILSVRC2012 devkit folder)")
        path = found[0]
    if not path.is_file():
        raise DatasetError(f"no such ground-truth file: {path}")
    if path.name == _DEVKIT_TRUTH or path.suffix == ".txt":
        return _read_devkit(path)
    return _read_csv(path)


def _read_csv(path: Path) -> dict[str, str]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.DictReader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path} is not a readable CSV file: {exc}") from None
    if not rows:
        raise DatasetError(f"{path} has no rows")
    columns = set(rows[0])
    name_col = next((c for c in ("ImageId", "path", "file", "filename") if c in columns), None)
    label_col = next((c for c in ("PredictionString", "wnid", "label") if c in columns), None)
    if name_col is None or label_col is None:
        raise DatasetError(f"{path} needs an image column (ImageId, path, file or filename) and a label column "
                           f"(PredictionString, wnid or label); it has {sorted(c for c in columns if c)}")
    truth: dict[str, str] = {}
    for n, row in enumerate(rows, 2):
        name, label = (row.get(name_col) or "").strip(), (row.get(label_col) or "").split()
        if not name or not label or not _WNID.match(label[0]):
            raise DatasetError(f"{path}:{n}: expected an image name and a wnid (n01234567), got {dict(row)}")
        stem = _stem(name)
        if stem in truth and truth[stem] != label[0]:
            raise DatasetError(f"{path}:{n}: {name} is listed twice with different classes")
        truth[stem] = label[0]
    return truth


def _read_devkit(path: Path) -> dict[str, str]:
    meta = path.with_name("meta.mat")
    if not meta.is_file():
        raise DatasetError(f"{path} numbers classes by ILSVRC2012_ID, which needs the devkit's meta.mat beside it "
                           f"({meta} is missing)")
    wnid_of = devkit_wnids(meta)
    truth: dict[str, str] = {}
    for n, line in enumerate(path.read_text(encoding="ascii", errors="replace").split(), 1):
        try:
            truth[f"ILSVRC2012_val_{n:08d}"] = wnid_of[int(line)]
        except (ValueError, KeyError):
            raise DatasetError(f"{path}:{n}: {line!r} is not an ILSVRC2012_ID of {meta}") from None
    return truth


def devkit_wnids(meta: Path) -> dict[int, str]:
    """``{ILSVRC2012_ID: wnid}`` for the 1000 leaf classes of the devkit's ``meta.mat``."""
    from scipy.io import loadmat

    try:
        synsets = loadmat(str(meta), squeeze_me=True)["synsets"]
        out = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise DatasetError(f"{meta} is not the ILSVRC2012 devkit's meta.mat ({type(exc).__name__}: {exc})") from None
    if not out:
        raise DatasetError(f"{meta} lists no leaf synsets")
    return out


def scan_flat_val(folder: str | Path, ground_truth: str | Path) -> LabelledImages:
    """The images of a flat validation folder, labelled with their wnids.

    Images the ground truth does not list are skipped (reason ``unlabelled``); ground-truth rows
    without an image are not an error (a subset of the validation set is fine).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"no such folder: {folder}")
    truth = read_ground_truth(ground_truth)
    files = sorted(p for p in folder.iterdir() if p.is_file() and is_image_name(p.name) and not p.name.startswith("."))
    if not files:
        raise DatasetError(f"{folder} holds no image files")
    classes = sorted({truth[_stem(p.name)] for p in files if _stem(p.name) in truth})
    index = {c: i for i, c in enumerate(classes)}
    paths, targets, skipped = [], [], []
    for p in files:
        wnid = truth.get(_stem(p.name))
        if wnid is None:
            skipped.append(SkippedFile(str(p), "unlabelled", f"not in {Path(ground_truth).name}"))
            continue
        paths.append(p)
        targets.append(index[wnid])
    if not paths:
        raise DatasetError(f"none of the {len(files)} images in {folder} is listed in {ground_truth}")
    return LabelledImages(folder, paths, targets, classes, skipped, [])


def read_real_labels(path: str | Path) -> dict[int, tuple[int, ...]]:
    """``{0-based validation image number: ReaL class indices}`` from ``real.json``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, huge numbers
        raise DatasetError(f"cannot read ReaL labels {path}: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(data, list) or not all(isinstance(x, list) for x in data):
        raise DatasetError(f"{path} must be a JSON list with one list of class indices per validation image")
    out: dict[int, tuple[int, ...]] = {}
    for i, labels in enumerate(data):
        if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1000 for v in labels):
            raise DatasetError(f"{path}: entry {i} holds something other than ImageNet class indices: {labels}")
        out[i] = tuple(sorted(set(labels)))
    return out


def real_sets_for(paths: list[Path], real: dict[int, tuple[int, ...]]) -> list[tuple[int, ...] | None]:
    """Per image, its ReaL classes; ``None`` where the file name is not a validation image the file covers."""
    out: list[tuple[int, ...] | None] = []
    for p in paths:
        i = val_index(p.name)
        out.append(real.get(i) if i is not None else None)
    return out
