"""The leakage guard: what a checkpoint was trained and validated on, and whether evaluated images overlap it.

``cnnlab train`` stores a *data record* in every checkpoint (key ``data_record``)::

    {"hash": "sha256[:8]",
     "splits": {"train": {"count": n, "root": "/data", "digests": int64 tensor (n,),
                          "paths": uint8 tensor (zlib of the paths, one per line, relative to root)},
                "val": {...}},
     "inherited": {"from": "runs/x/best.pt", "record": {...}}}   # a continued run: its parent's record

Each image is identified by its content: the first 8 bytes of the SHA-256 of the file's bytes, as
one int64 (a chance collision between 100k and 100k images is about 1 in 2e9). 100k images take
800 kB of digests plus their compressed paths, next to the weights. ``inherited`` chains the
record of the checkpoint a run continued from: its images were trained on too.

:func:`overlap` hashes the files about to be evaluated and reports those identical to images the
model was trained on (train), chose its epoch with (val) or inherited. ``bench`` and ``predict``
call it to warn that accuracy on such images is optimistic. Only byte-identical copies are found
(a re-encoded or resized copy is not; :mod:`cnnlab.imagedata.splits` keeps those in one split at training).
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnlab.progress import Progress

HASH = "sha256[:8]"
#: The splits recorded: what the model was fitted on and what chose its epoch.
RECORDED_SPLITS = ("train", "val")
#: Evaluated paths listed per split in a report (the counts are complete).
EXAMPLES = 5


def file_digest(path: str | Path) -> int | None:
    """The first 8 bytes of the SHA-256 of the file's bytes as a signed int64; ``None`` if unreadable. A record of
    a dataset (``shard.tar#KEY``, ``hf:name/split#ROW``) is hashed on its image bytes, as a file would be."""
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.records import is_record, read_record

    try:
        if is_record(path):
            digest = hashlib.sha256(read_record(path, 1 << 31)).digest()
        else:
            with open(path, "rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").digest()
    except (OSError, ImageDecodeError):
        return None
    return int.from_bytes(digest[:8], "little", signed=True)


def file_digests(paths: Sequence[str | Path], progress: Progress | None = None) -> np.ndarray:
    """:func:`file_digest` of every path (int64; unreadable files get 0, which no real file has in practice)."""
    progress = progress or Progress()
    progress.start("hash", "hashing images (leakage record)", total=len(paths))
    out = np.zeros(len(paths), dtype=np.int64)
    for i, path in enumerate(paths):
        out[i] = file_digest(path) or 0
        if i % 256 == 255:
            progress.update("hash", advance=256)
    progress.finish("hash")
    return out


def _pack_paths(paths: Sequence[Path], root: Path) -> bytes:
    names = [(p.relative_to(root) if p.is_relative_to(root) else p).as_posix() for p in paths]
    return zlib.compress("\n".join(names).encode("utf-8", "surrogateescape"), 6)


def make_record(splits: Mapping[str, tuple[Path, Sequence[Path]]], *, inherited: Mapping[str, Any] | None = None,
                parent: str | None = None, progress: Progress | None = None) -> dict[str, Any]:
    """The data record of a run: ``splits`` maps a split name to ``(root, paths)``.

    ``inherited``: the record of the checkpoint ``parent`` the run continued from.
    """
    import torch

    record: dict[str, Any] = {"hash": HASH, "splits": {}}
    for name, (root, paths) in splits.items():
        digests = file_digests(paths, progress)
        record["splits"][name] = {
            "count": len(paths),
            "root": str(root),
            "digests": torch.from_numpy(digests),
            "paths": torch.frombuffer(bytearray(_pack_paths(paths, root)), dtype=torch.uint8),
        }
    if inherited is not None:
        record["inherited"] = {"from": parent or "", "record": dict(inherited)}
    return record


def record_to_json(record: Mapping[str, Any]) -> dict[str, Any]:
    """A data record (its tensors or arrays) as JSON-able values: digests and packed paths in base64, so that
    the export cache can keep it next to a checkpoint's ONNX file and ``predict`` can read it without torch.
    Raises ``ValueError`` or ``KeyError`` for a record without what :func:`make_record` writes (a hand-made one)."""
    if record.get("hash") != HASH:
        raise ValueError(f"unknown digest {record.get('hash')!r}")
    out: dict[str, Any] = {"hash": HASH, "splits": {}}
    for name, entry in (record.get("splits") or {}).items():
        out["splits"][name] = {
            "count": int(entry["count"]), "root": str(entry["root"]),
            "digests": base64.b64encode(np.asarray(entry["digests"], dtype="<i8").tobytes()).decode("ascii"),
            "paths": base64.b64encode(bytes(np.asarray(entry["paths"], dtype=np.uint8))).decode("ascii")}
    inherited = record.get("inherited")
    if inherited and inherited.get("record"):
        out["inherited"] = {"from": str(inherited.get("from") or ""), "record": record_to_json(inherited["record"])}
    return out


def record_from_json(obj: Any) -> dict[str, Any]:
    """The record :func:`record_to_json` wrote, with numpy arrays. Raises ``ValueError`` for anything else
    (a damaged or edited file: the caller reads the checkpoint instead)."""
    try:
        record: dict[str, Any] = {"hash": obj["hash"], "splits": {}}
        if obj["hash"] != HASH:
            raise ValueError(f"unknown digest {obj['hash']!r}")
        for name, entry in obj["splits"].items():
            digests = np.frombuffer(base64.b64decode(entry["digests"], validate=True), dtype="<i8").astype(np.int64)
            if len(digests) != int(entry["count"]):
                raise ValueError("digests and count differ")
            record["splits"][str(name)] = {
                "count": int(entry["count"]), "root": str(entry["root"]), "digests": digests,
                "paths": np.frombuffer(base64.b64decode(entry["paths"], validate=True), dtype=np.uint8)}
        inherited = obj.get("inherited")
        if inherited:
            record["inherited"] = {"from": str(inherited["from"]), "record": record_from_json(inherited["record"])}
    except (KeyError, TypeError, AttributeError, RecursionError, OverflowError) as exc:  # bad base64: ValueError
        raise ValueError(f"not a data record: {exc}") from None
    return record


def recorded_paths(entry: Mapping[str, Any]) -> list[str]:
    """The paths of one split entry of a record (as stored: relative to its ``root`` where they were inside it)."""
    data = bytes(np.asarray(entry["paths"], dtype=np.uint8))
    text = zlib.decompress(data).decode("utf-8", "surrogateescape") if data else ""
    return text.split("\n") if text else []


def _recorded(record: Mapping[str, Any], prefix: str = "") -> list[tuple[str, np.ndarray]]:
    """``(split label, digests)`` of a record and of the records it inherited."""
    found = [(prefix + name, np.asarray(entry["digests"], dtype=np.int64))
             for name, entry in (record.get("splits") or {}).items()]
    inherited = record.get("inherited")
    if inherited and inherited.get("record"):
        found += _recorded(inherited["record"], prefix + "parent ")
    return found


@dataclass
class OverlapReport:
    """Which evaluated images are byte-identical to images a checkpoint was trained or validated on."""

    source: str
    checked: int
    #: Evaluated images found in any recorded split (each counted once).
    overlapping: int = 0
    #: Split label (``train``, ``val``, ``parent train``, ...) -> how many evaluated images it holds.
    counts: dict[str, int] = field(default_factory=dict)
    #: A few of those evaluated paths per split label.
    examples: dict[str, list[str]] = field(default_factory=dict)
    #: ``False`` when the checkpoint has no data record (written before the guard existed).
    recorded: bool = True

    @property
    def ok(self) -> bool:
        return self.overlapping == 0

    def message(self) -> str | None:
        """One sentence for a warning, ``None`` when nothing overlaps and the record exists."""
        if not self.recorded:
            return f"{self.source} records no training data (older cnnlab): leakage not checked"
        if self.ok:
            return None
        parts = ", ".join(f"{n} in its {label} split" for label, n in self.counts.items() if n)
        return (f"{self.overlapping} of {self.checked} evaluated images are identical to images {self.source} "
                f"was trained or validated on ({parts}): accuracy on them is optimistic")

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "checked": self.checked, "overlapping": self.overlapping,
                "recorded": self.recorded, "counts": dict(self.counts), "examples": dict(self.examples)}


def overlap(
    checkpoint: str | Path | Mapping[str, Any],
    paths: Sequence[str | Path],
    *,
    digests: np.ndarray | None = None,
    progress: Progress | None = None,
    source: str | None = None,
) -> OverlapReport:
    """Which of ``paths`` the checkpoint (a file or a checkpoint dict) saw in training or validation.

    ``digests``: :func:`file_digests` of ``paths`` when already computed (several checkpoints
    against one data set hash the files once). ``source``: what the report calls a checkpoint given as a dict.
    """
    if isinstance(checkpoint, Mapping):
        ckpt, source = checkpoint, source or "the checkpoint"
    else:
        from cnnlab.models.checkpoint import read_checkpoint

        ckpt, source = read_checkpoint(checkpoint), str(checkpoint)
    record = ckpt.get("data_record")
    if not record:
        return OverlapReport(source, len(paths), recorded=False)
    if digests is None:
        digests = file_digests(paths, progress)
    report = OverlapReport(source, len(paths))
    hit = np.zeros(len(paths), dtype=bool)
    for label, seen in _recorded(record):
        mask = np.isin(digests, seen[seen != 0]) & (digests != 0)
        report.counts[label] = int(mask.sum())
        report.examples[label] = [str(paths[i]) for i in np.flatnonzero(mask)[:EXAMPLES]]
        hit |= mask
    report.overlapping = int(hit.sum())
    return report
