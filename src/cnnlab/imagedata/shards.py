"""WebDataset shards: the samples of a tar file, grouped by key the way the ``webdataset`` library groups them.

A sample is the members that share a key (``n01440764_10026.jpg``, ``n01440764_10026.cls``; the key is the name up to
its first dot: ``webdataset.tariterators.base_plus_ext``). Walking a shard reads its headers only, and the small
label members: an index of where each image's bytes lie, so that a loader worker reads one image by its offset
without streaming the shard.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

from cnnlab.errors import DatasetError

#: Image members of a WebDataset sample, in order of preference (compared in lower case).
SHARD_IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")
#: Fields of a sample's ``.json`` member that may hold its label (an index or a class name), in order.
JSON_LABEL_FIELDS: tuple[str, ...] = ("label", "class", "cls", "category", "class_name", "target")
#: Largest ``.cls``/``.json`` label member read while indexing a shard.
_MAX_LABEL_BYTES = 1 << 20


def class_names_beside(folder: Path) -> list[str] | None:
    """Class names from ``classes.txt`` (one a line, line n = class n) or ``classes.json`` (a list, or a
    mapping name -> index or index -> name) in ``folder``."""
    txt, js = folder / "classes.txt", folder / "classes.json"
    if txt.is_file():
        return [line.strip() for line in txt.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    if js.is_file():
        try:
            data = json.loads(js.read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{js} is not readable JSON: {exc}") from None
        if isinstance(data, list):
            return [str(x) for x in data]
        if isinstance(data, dict):
            pairs = [(int(v), str(k)) if str(v).lstrip("-").isdigit() else (int(k), str(v)) for k, v in data.items()]
            size = max(i for i, _ in pairs) + 1
            names = [str(i) for i in range(size)]
            for i, name in pairs:
                names[i] = name
            return names
        raise DatasetError(f"{js} must hold a list of class names or a mapping between names and indices")
    return None


def label_of(members: dict[str, bytes]) -> int | str | None:
    """A sample's label from its ``cls`` member (an index) or its ``json`` member (a label/class field)."""
    for ext in ("cls", "cls2", "index"):
        if ext in members:
            text = members[ext].decode("utf-8", "replace").strip()
            return int(text) if text.lstrip("-").isdigit() else text or None
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
                if isinstance(value, (int, str)):
                    return int(value) if isinstance(value, str) and value.strip().isdigit() else value
    return None


def walk_shard(path: Path) -> tuple[dict[str, tuple[int, int, str]], dict[str, int | str | None], list[str]]:
    """One pass over a shard's headers: key -> (offset, size, extension) of its image member, key -> label, and
    the keys seen twice. Only the small label members are read."""
    from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

    images: dict[str, tuple[int, int, str]] = {}
    small: dict[str, dict[str, bytes]] = {}
    order: list[str] = []
    repeated: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                name = member.name
                if not member.isfile() or ("/" not in name and name.startswith(meta_prefix)
                                           and name.endswith(meta_suffix)):
                    continue
                key, ext = base_plus_ext(name)
                if key is None or ext is None:
                    continue
                ext = ext.lower()  # webdataset's group_by_keys(lcase=True)
                if ext in SHARD_IMAGE_EXTENSIONS:
                    if key in images:
                        repeated.append(key)
                        continue
                    images[key] = (member.offset_data, member.size, ext)
                    order.append(key)
                elif ext in ("cls", "cls2", "index", "json") and member.size <= _MAX_LABEL_BYTES:
                    handle = tar.extractfile(member)
                    if handle is not None:
                        small.setdefault(key, {})[ext] = handle.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DatasetError(f"{path} is not a readable tar file: {exc}") from None
    return {k: images[k] for k in order}, {k: label_of(small.get(k, {})) for k in order}, repeated
