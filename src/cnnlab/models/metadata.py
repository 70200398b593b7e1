"""Checks of model metadata read from files a user may not control: checkpoint records and ONNX sidecars.

Both are data that someone else may have written (a downloaded checkpoint, an ``.onnx.json`` edited by
hand). They are checked here, in one place, before anything uses them, so that a wrong shape gives one
clear :class:`~cnnlab.errors.WeightsIntegrityError` naming the file and the field, never a traceback deep
in a job (a string where a mapping is expected, nesting that overflows the stack when written as JSON) or
a model that runs with nonsense preprocessing (a crop of mostly padding, a standard deviation that
turns every pixel into infinity, ``True`` read as size 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from cnnlab.errors import WeightsIntegrityError
from cnnlab.imagedata.preprocess import CROP_MODES, INTERPOLATIONS, MAX_INPUT_SIZE, Preprocessing

#: Deepest nesting of lists and mappings accepted in a record (cnnlab writes 4 or 5 levels; a parent
#: chain of continued runs adds 2 per generation). Deeper data would overflow the stack of json and pickle.
MAX_DEPTH = 64
#: Longest chain of continued runs a data record may carry (each generation nests 4 levels deeper).
MAX_GENERATIONS = 50
#: How much bigger than the resize the crop may be: the border is padding. timm's VOLO tags crop 1.15 times
#: their resize (``crop_pct`` above 1); more than this is an edited record.
MAX_CROP_OVER_RESIZE = 1.25
#: Per-channel mean a model may subtract, in units of the [0, 1] pixel range (published ones lie in [0, 1]).
MEAN_RANGE = (-1.0, 2.0)
#: Per-channel standard deviation a model may divide by (published ones lie in [0.2, 1]); a tiny one
#: multiplies every pixel into float16's overflow, a huge one makes every image the same.
STD_RANGE = (0.01, 10.0)


def metadata_error(where: str, field: str, problem: str) -> WeightsIntegrityError:
    """The error for ``field`` of the file ``where`` (``checkpoint runs/x/best.pt``, ``model.onnx.json``)."""
    return WeightsIntegrityError(f"{where}: {field!r} {problem} (the file was edited or damaged, or was not written "
                                 "by cnnlab)")


def nesting_depth(value: Any, limit: int = MAX_DEPTH) -> int:
    """How deeply lists, tuples and mappings nest in ``value`` (a scalar is 0), counted without recursion and
    no further than ``limit + 1``."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        depth += 1
        deepest = max(deepest, depth)
        if depth > limit:
            return depth
        stack.extend((child, depth) for child in children)
    return deepest


def check_nesting(value: Any, where: str, field: str, limit: int = MAX_DEPTH) -> None:
    """Refuse ``value`` nested deeper than ``limit`` levels."""
    if nesting_depth(value, limit) > limit:
        raise metadata_error(where, field, f"is nested more than {limit} levels deep")


def optional_mapping(record: Mapping[str, Any], field: str, where: str,
                     label: str | None = None) -> Mapping[str, Any] | None:
    """``record[field]`` when it is a mapping with string keys, ``None`` when it is absent or null; else an error
    (naming the field as ``label``, its full path, where given)."""
    value = record.get(field)
    label = label or field
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise metadata_error(where, label, f"must be a mapping, not {type(value).__name__}")
    if not all(isinstance(k, str) for k in value):
        raise metadata_error(where, label, "must have text keys")
    return value


def check_classes(classes: Any, where: str, field: str = "classes") -> list[str]:
    """A non-empty list of distinct, non-empty class names."""
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise metadata_error(where, field, "must be a non-empty list of class names")
    if len(set(classes)) != len(classes):
        twice = sorted({c for c in classes if classes.count(c) > 1})
        raise metadata_error(where, field, f"has duplicate names ({', '.join(twice[:5])})")
    return classes


def _size(data: Mapping[str, Any], key: str, where: str, field: str) -> int:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIZE:
        raise metadata_error(where, f"{field}.{key}", f"must be a whole number from 1 to {MAX_INPUT_SIZE}, "
                             f"got {_short(value)}")
    return value


def _channels(data: Mapping[str, Any], key: str, bounds: tuple[float, float], where: str,
              field: str) -> tuple[float, float, float]:
    values = data.get(key)
    low, high = bounds
    if (
        not isinstance(values, (list, tuple))
        or len(values) != 3
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)
        or not all(low <= v <= high for v in values)
    ):
        raise metadata_error(where, f"{field}.{key}", f"must be 3 numbers from {low:g} to {high:g} (one per RGB "
                             f"channel), got {_short(values)}")
    return (float(values[0]), float(values[1]), float(values[2]))


def check_preprocessing(data: Any, where: str, field: str = "preprocessing", *,
                        default_crop_mode: str = "center") -> Preprocessing:
    """The :class:`Preprocessing` of a record, every number checked: sizes whole numbers (``True`` is not 1),
    the crop at most :data:`MAX_CROP_OVER_RESIZE` times the resize, mean and std in the ranges real models use (:data:`MEAN_RANGE`,
    :data:`STD_RANGE`). ``default_crop_mode``: for records written before the field existed."""
    if not isinstance(data, Mapping):
        raise metadata_error(where, field, f"must be a mapping, not {type(data).__name__}")
    resize = _size(data, "resize_size", where, field)
    crop = _size(data, "crop_size", where, field)
    if crop > resize * MAX_CROP_OVER_RESIZE:
        raise metadata_error(where, field, f"crops {crop} pixels out of an image resized to {resize}: most of "
                             f"the crop would be padding (at most {MAX_CROP_OVER_RESIZE:g} times the resize)")
    mean = _channels(data, "mean", MEAN_RANGE, where, field)
    std = _channels(data, "std", STD_RANGE, where, field)
    interpolation = data.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise metadata_error(where, f"{field}.interpolation", f"must be one of {', '.join(INTERPOLATIONS)}, "
                             f"got {_short(interpolation)}")
    crop_mode = data.get("crop_mode", default_crop_mode)
    if crop_mode not in CROP_MODES:
        raise metadata_error(where, f"{field}.crop_mode", f"must be one of {', '.join(CROP_MODES)}, "
                             f"got {_short(crop_mode)}")
    return Preprocessing(resize_size=resize, crop_size=crop, mean=mean, std=std, interpolation=str(interpolation),
                         crop_mode=str(crop_mode))


def check_sidecar(meta: Any, where: str) -> dict[str, Any]:
    """The checks of an ONNX sidecar (``FILE.onnx.json``) that a runtime relies on: its classes, input type,
    preprocessing and ``quantization`` entry, and no deep nesting."""
    if not isinstance(meta, dict):
        raise WeightsIntegrityError(f"{where}: must hold a JSON object, not {type(meta).__name__}")
    check_nesting(meta, where, "(the file)")
    check_classes(meta.get("classes"), where)
    data_input = optional_mapping(meta, "input", where)
    if data_input is None or data_input.get("dtype") != "uint8":
        raise WeightsIntegrityError(f"{where}: cnnlab runs ONNX files that take uint8 images (`cnnlab export`)")
    check_preprocessing(meta.get("preprocessing"), where)
    optional_mapping(meta, "quantization", where)  # informative fields (spec, model...) of other types are ignored
    return meta


#: Optional checkpoint entries that hold mappings (``head`` is optional in old checkpoints).
CHECKPOINT_MAPPINGS = ("head", "train_args", "metrics", "resolved", "versions", "resume", "data_record")


def check_checkpoint_record(ckpt: Mapping[str, Any], where: str) -> None:
    """The checks of a checkpoint's metadata that the jobs rely on (the caller has checked ``format``,
    ``version`` and ``state_dict``): the class list, the preprocessing, mappings where mappings are expected,
    no deep nesting, and a data record of the shape :mod:`cnnlab.models.leakage` reads."""
    check_classes(ckpt.get("classes"), where)
    check_preprocessing(ckpt.get("preprocessing"), where)
    for field in CHECKPOINT_MAPPINGS:
        value = optional_mapping(ckpt, field, where)
        if value is not None:
            limit = MAX_DEPTH + 4 * MAX_GENERATIONS if field == "data_record" else MAX_DEPTH
            check_nesting(value, where, field, limit)
    head = optional_mapping(ckpt, "head", where)
    if head is not None and "in_features" in head:
        features = head["in_features"]
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise metadata_error(where, "head.in_features", f"must be a positive whole number, got {_short(features)}")
    record = optional_mapping(ckpt, "data_record", where)
    if record:
        check_data_record(record, where)


def check_data_record(record: Mapping[str, Any], where: str, field: str = "data_record") -> None:
    """A leakage record (:mod:`cnnlab.models.leakage`): ``splits`` of int64 digest tensors, an optional chain of
    ``inherited`` records (walked without recursion)."""
    import torch

    depth = 0
    while record:
        hash_name = record.get("hash")
        if hash_name is not None and hash_name != "sha256[:8]":
            raise metadata_error(where, f"{field}.hash", f"names an unknown digest {_short(hash_name)}")
        splits = optional_mapping(record, "splits", where, f"{field}.splits")
        for name, entry in (splits or {}).items():
            label = f"{field}.splits.{name}"
            if not isinstance(entry, Mapping):
                raise metadata_error(where, label, f"must be a mapping, not {type(entry).__name__}")
            digests = entry.get("digests")
            if not isinstance(digests, torch.Tensor) or digests.dtype != torch.int64 or digests.ndim != 1:
                raise metadata_error(where, f"{label}.digests", "must be a one-dimensional int64 tensor of "
                                     f"digests, got {_short(digests)}")
            paths = entry.get("paths")
            if paths is not None and (not isinstance(paths, torch.Tensor) or paths.dtype != torch.uint8):
                raise metadata_error(where, f"{label}.paths", "must be a uint8 tensor (compressed paths)")
        inherited = optional_mapping(record, "inherited", where, f"{field}.inherited")
        field += ".inherited.record"
        depth += 1
        if depth > MAX_GENERATIONS:
            raise metadata_error(where, "data_record", f"inherits through more than {MAX_GENERATIONS} parent runs")
        if inherited is None:
            return
        parent = inherited.get("record")
        if parent is not None and not isinstance(parent, Mapping):
            raise metadata_error(where, field, f"must be a mapping, not {type(parent).__name__}")
        record = parent or {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
