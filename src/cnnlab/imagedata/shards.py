"""WebDataset shards: the samples of a tar file, grouped by key the way the ``webdataset`` library groups them.

A sample is the members that share a key (``n01440764_10026.jpg``, ``n01440764_10026.cls``; the key is the name up to
its first dot: ``webdataset.tariterators.base_plus_ext``). Walking a shard reads its headers only, and the small
label members: an index of where each image's bytes lie, so that a loader worker reads one image by its offset
without streaming the shard.

What a walk does not use is reported, never dropped silently (:class:`ShardWalk.skipped`): a key met again after its
sample was complete (the first sample is kept whole, with its own label), link and device members (never followed),
and the end of a truncated shard (the complete samples before it are read, as ``webdataset`` reads them). Keys are
made printable (:func:`cnnlab.imagedata.skipped.printable`): a member name holding terminal escapes reaches reports
and terminals escaped.
"""

from __future__ import annotations

import json
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import DatasetError
from cnnlab.imagedata.skipped import SkippedFile, printable

#: Image members of a WebDataset sample, in order of preference (compared in lower case).
SHARD_IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
#: Members of a sample that hold its label.
LABEL_EXTENSIONS: tuple[str, ...] = ("cls", "cls2", "index", "json")
#: Fields of a sample's ``.json`` member that may hold its label (an index or a class name), in order.
JSON_LABEL_FIELDS: tuple[str, ...] = ("label", "class", "cls", "category", "class_name", "target")
#: Largest ``.cls``/``.json`` label member read while indexing a shard.
_MAX_LABEL_BYTES = 1 << 20
#: The files beside shards that name their classes.
CLASS_FILES: tuple[str, ...] = ("classes.txt", "classes.json")
#: Largest class names file read (a million ImageNet-sized names fit many times over).
_MAX_CLASS_FILE_BYTES = 64 << 20


def class_names_beside(folder: Path) -> list[str] | None:
    """Class names from ``classes.txt`` (one a line, line n = class n) or ``classes.json`` (a list, or a mapping
    name -> index or index -> name whose indices are exactly 0..n-1) in ``folder``; ``None`` without either.

    Raises:
        DatasetError: a file that does not give n distinct names for the indices 0..n-1, or both files giving
        different names.
    """
    txt, js = folder / CLASS_FILES[0], folder / CLASS_FILES[1]
    from_txt = _names_from_txt(txt) if txt.is_file() else None
    from_json = _names_from_json(js) if js.is_file() else None
    if from_txt is not None and from_json is not None and from_txt != from_json:
        first = next((i for i, (a, b) in enumerate(zip(from_txt, from_json)) if a != b), min(len(from_txt),
                                                                                           len(from_json)))
        said = (f"class {first} is {_shown(from_txt, first)} in one and {_shown(from_json, first)} in the other")
        raise DatasetError(f"{txt} and {js} name different classes ({said}): keep one of them")
    return from_txt if from_txt is not None else from_json


def _shown(names: list[str], i: int) -> str:
    return repr(printable(names[i])) if i < len(names) else "missing"


def _read_text(path: Path) -> str:
    try:
        if path.stat().st_size > _MAX_CLASS_FILE_BYTES:
            raise DatasetError(f"{path} is larger than {_MAX_CLASS_FILE_BYTES >> 20} MB: not a list of class names")
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path} is not readable UTF-8 text: {exc}") from None


def _names_from_txt(path: Path) -> list[str]:
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    _refuse_repeats(names, path)
    return names


def _names_from_json(path: Path) -> list[str]:
    try:
        data = json.loads(_read_text(path))
    except ValueError as exc:
        raise DatasetError(f"{path} is not readable JSON: {exc}") from None
    shape = ('must hold a list of class names (["cat", "dog"]) or a mapping of names to indices ({"cat": 0, '
             '"dog": 1}) or of indices to names ({"0": "cat", "1": "dog"})')
    if isinstance(data, list):
        if not all(isinstance(x, str) and x.strip() for x in data):
            raise DatasetError(f"{path} {shape}; its list holds something other than class names")
        names = [x.strip() for x in data]
    elif isinstance(data, dict) and data:
        values = list(data.values())
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            pairs = [(v, k) for k, v in data.items()]
        elif all(k.strip().isdigit() and isinstance(v, str) for k, v in data.items()):
            pairs = [(int(k), v) for k, v in data.items()]
        else:
            raise DatasetError(f"{path} {shape}")
        size = len(pairs)
        counts = Counter(i for i, _ in pairs)
        twice = sorted(i for i, n in counts.items() if n > 1)
        outside = sorted(i for i in counts if not 0 <= i < size)
        if twice or outside:
            said = f"index {twice[0]} twice" if twice else f"index {outside[0]}"
            raise DatasetError(f"{path}: the indices of its {size} class{'es' if size > 1 else ''} must be 0 to "
                               f"{size - 1}, each once (it gives {said})")
        names = [""] * size
        for i, name in pairs:
            names[i] = name.strip()
        if not all(names):
            raise DatasetError(f"{path}: class {names.index('')} has an empty name")
    else:
        raise DatasetError(f"{path} {shape}")
    _refuse_repeats(names, path)
    return names


def _refuse_repeats(names: list[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DatasetError(f"{path} names the class {printable(name)!r} twice (classes {seen[name]} and {i})")
        seen[name] = i


def label_of(members: dict[str, bytes]) -> int | str | None:
    """A sample's label from its ``cls`` member (an index) or its ``json`` member (a label/class field)."""
    for ext in ("cls", "cls2", "index"):
        if ext in members:
            text = members[ext].decode("utf-8", "replace").strip()
            return int(text) if _is_int(text) else text or None
    if "json" in members:
        try:
            obj = json.loads(members["json"])
        except ValueError:
            return None
        if isinstance(obj, dict):
            for key in JSON_LABEL_FIELDS:
                value = obj.get(key)
                if isinstance(value, bool) or value is None:
                    continue
                if isinstance(value, int):
                    return value
                if isinstance(value, str) and value.strip():
                    return int(value) if _is_int(value.strip()) else value.strip()
    return None


def _is_int(text: str) -> bool:
    return text.lstrip("-").isdigit() and text.count("-") <= 1 and len(text) < 20


@dataclass
class ShardWalk:
    """What one pass over a shard's headers found."""

    #: key -> (offset, size, extension) of the sample's image member, in the shard's order.
    images: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    #: key -> the sample's label (``None``: no label member).
    labels: dict[str, int | str | None] = field(default_factory=dict)
    #: Members and samples not used (a repeated key, a link member, the truncated end), named ``SHARD#KEY``.
    skipped: list[SkippedFile] = field(default_factory=list)


def walk_shard(path: Path) -> ShardWalk:
    """One pass over a shard's headers: where each sample's image lies, its label, and what was not used.

    Only the small label members are read. A sample is kept whole: when a key comes back with a member its sample
    already has (``dup.jpg``, ``dup.cls``, ``dup.jpg``, ``dup.cls``), the first sample keeps its own image and
    label and the repeat is reported as a ``duplicate``. Keys are escaped to be printable.

    Raises:
        DatasetError: the file is not a tar file at all (a shard cut short keeps the samples before the cut).
    """
    from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

    walk = ShardWalk()
    small: dict[str, dict[str, bytes]] = {}
    seen: dict[str, set[str]] = {}  # key -> the member extensions its sample has
    closed: set[str] = set()  # keys whose sample came round a second time: later members are the repeat's
    try:
        size = os.path.getsize(path)
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable tar file: {exc}") from None

    def skip(key: str, reason: str, detail: str) -> None:
        walk.skipped.append(SkippedFile(f"{path}#{key}", reason, detail))

    last = None
    with tar:
        members = iter(tar)
        while True:
            try:
                member = next(members)
            except StopIteration:
                break
            except (tarfile.TarError, OSError, EOFError) as exc:
                after = f" after the member {last!r}" if last else ""
                reason = "truncated" if "end of data" in str(exc) or isinstance(exc, EOFError) else "unreadable"
                walk.skipped.append(SkippedFile(str(path), reason, f"the shard cannot be read{after} ({exc}): "
                                                "the samples before are used"))
                break
            last = member.name
            name = member.name
            if member.isdir() or ("/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix)):
                continue
            raw_key, ext = base_plus_ext(name)
            if raw_key is None or ext is None:
                continue
            key, ext = printable(raw_key), ext.lower()  # webdataset's group_by_keys(lcase=True)
            if key in closed:
                continue
            if not member.isreg():
                what = (f"a symbolic link (to {member.linkname!r})" if member.issym() else
                        f"a hard link (to {member.linkname!r})" if member.islnk() else "not a regular file")
                if ext in SHARD_IMAGE_EXTENSIONS or ext in LABEL_EXTENSIONS:
                    skip(key, "not-a-file", f"the member {name!r} is {what}; links are not followed")
                continue
            exts = seen.setdefault(key, set())
            if ext in exts:  # the same member name again: a second sample with this key
                closed.add(key)
                skip(key, "duplicate", f"the key comes again (member {name!r}) after its sample; the first sample "
                                       "is used, the repeat is not")
                continue
            exts.add(ext)
            is_image = ext in SHARD_IMAGE_EXTENSIONS
            if is_image and key in walk.images:
                skip(key, "duplicate", f"a second image member in the sample ({name!r}); its first image "
                                       f"(.{walk.images[key][2]}) is used")
                continue
            if member.offset_data + member.size > size:
                walk.skipped.append(SkippedFile(str(path), "truncated", f"the shard ends inside the member {name!r}: "
                                                "the samples before are used"))
                break
            if is_image:
                walk.images[key] = (member.offset_data, member.size, ext)
            elif ext in LABEL_EXTENSIONS and member.size <= _MAX_LABEL_BYTES:
                try:
                    handle = tar.extractfile(member)
                    data = handle.read() if handle is not None else None
                except (tarfile.TarError, OSError, EOFError):
                    data = None
                if data is not None:
                    small.setdefault(key, {})[ext] = data
    walk.labels = {k: label_of(small.get(k, {})) for k in walk.images}
    return walk

