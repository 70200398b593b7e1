"""Penultimate features (and logits) of every image, with a cache so a grown set only embeds its new files.

The cache is one ``.npz`` file per model and backend inside the dataset folder,
``DIR/.cnnlab/embeddings-<model>.npz`` for PyTorch, ``embeddings-<model>.onnxruntime.npz`` for
ONNX Runtime (a hidden folder: dataset scans skip it). The two backends' features agree to float
rounding, not bit for bit, so they are never mixed. Entries are keyed by the sha256 of the file's bytes, so
a file that was moved or renamed (``--apply`` and ``--undo`` move files) is still found; a
(path, size, mtime) index avoids hashing unchanged files again. A record of a dataset (``shard.tar#KEY``,
``saved#7``: :mod:`cnnlab.imagedata.records`) is keyed by the sha256 of its image bytes likewise, and indexed by
its name with its container's size and mtime (a folder's, such as a saved dataset's: the total size and the latest
mtime of the files in it), so an unchanged set is not read again. The cache records which model and
weights file made it and is ignored when they differ. Features and logits are stored as float16,
and fresh ones are rounded the same way, so a run gives the same answer with or without the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cnnlab.errors import ImageDecodeError
from cnnlab.imagedata.datasets import SkippedFile
from cnnlab.imagedata.hashes import file_sha256
from cnnlab.imagedata.records import RECORD_SEP, is_hf_name, is_record, split_record
from cnnlab.progress import Progress

if TYPE_CHECKING:
    from cnnlab.runtime.base import Runtime

CACHE_FORMAT = 1
_STORED = np.float16
#: The least a cache may unpack to when read; a larger set may have up to :data:`CACHE_BYTES_PER_IMAGE` per image.
MIN_CACHE_BYTES = 256 * 2**20
#: Room per image of the set (features and logits of a large model as float16, the sha256, the file's path).
CACHE_BYTES_PER_IMAGE = 256 * 2**10


class CacheTooLargeError(ValueError):
    """A cache file that would unpack to more than its bound (a zip bomb, or a file that is not ours)."""


def read_npz(file: Path, max_bytes: int) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file, reading at most ``max_bytes`` uncompressed bytes in all.

    ``np.load`` would unpack whatever a member claims to hold: a small file can unpack to gigabytes.
    Members are read in bounded chunks (what a member's header declares is not trusted), and no
    object arrays are unpickled. Raises :class:`CacheTooLargeError`, or what a damaged file raises.
    """

    arrays: dict[str, np.ndarray] = {}
    left = max_bytes
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            if info.file_size > left:
                raise CacheTooLargeError(f"it would unpack to more than {max_bytes / 2**20:.0f} MiB")
            with archive.open(info) as member:
                raw = member.read(left + 1)
            if len(raw) > left:
                raise CacheTooLargeError(f"it would unpack to more than {max_bytes / 2**20:.0f} MiB")
            left -= len(raw)
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            arrays[name] = _array(raw)
    return arrays


def _array(raw: bytes) -> np.ndarray:
    """One ``.npy`` member, its declared shape checked against the bytes there are before anything is allocated."""
    import io
    import math

    from numpy.lib import format as npy

    buffer = io.BytesIO(raw)
    version = npy.read_magic(buffer)
    read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
    shape, _, dtype = read_header(buffer)
    if dtype.hasobject or math.prod(shape) * dtype.itemsize > len(raw) - buffer.tell():
        raise ValueError("an array member declares more data than it holds")
    buffer.seek(0)
    return np.load(buffer, allow_pickle=False)


@dataclass
class Embeddings:
    """Features and logits of ``paths``; rows of files that could not be decoded are zeros, ``ok`` False."""

    features: np.ndarray
    logits: np.ndarray
    ok: np.ndarray
    skipped: list[SkippedFile] = field(default_factory=list)
    from_cache: int = 0
    computed: int = 0
    cache_file: Path | None = None
    #: What the user should know about the cache (ignored, not written).
    notes: list[str] = field(default_factory=list)


def cache_path(folder: Path, model_name: str, backend: str = "torch") -> Path:
    """``folder/embeddings-<model>.npz`` (``-<model>.<backend>.npz`` but for torch), the name made safe for a file."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"
    return folder / (f"embeddings-{slug}.npz" if backend == "torch" else f"embeddings-{slug}.{backend}.npz")


def model_identity(model: Runtime) -> dict[str, Any]:
    """What must match for cached features to be reused: the model, the exact weights file, the backend."""
    identity: dict[str, Any] = {"format": CACHE_FORMAT, "model": model.name, "preprocessing": model.preprocessing.to_dict()}
    if model.backend.value != "torch":  # torch's caches, written before there were others, name no backend
        identity["backend"] = model.backend.value
    if model.weights_path is not None:
        stat = Path(model.weights_path).stat()
        identity.update(weights=str(model.weights_path), weights_size=stat.st_size, weights_mtime_ns=stat.st_mtime_ns)
    return json.loads(json.dumps(identity))  # as it reads back from the file (tuples become lists)


class EmbeddingCache:
    """The on-disk cache: sha256 -> (features, logits), plus a stat index -> sha256."""

    def __init__(self, file: Path, identity: dict[str, Any], *, max_bytes: int = MIN_CACHE_BYTES) -> None:
        self.file = file
        self.identity = identity
        #: The most bytes the cache may unpack to when read (a larger one is ignored, with a :attr:`note`).
        self.max_bytes = max_bytes
        #: Why the cache on disk was not used, if the user should know.
        self.note: str | None = None
        self.vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.index: dict[tuple[str, int, int], str] = {}
        self._load()

    def _load(self) -> None:
        if self.file.is_symlink():
            self.note = f"{self.file} is a symbolic link: not read (nor written through); the embeddings are computed"
            return
        if not self.file.is_file():
            return
        try:
            arrays = read_npz(self.file, self.max_bytes)
            if json.loads(str(arrays["identity"])) != self.identity:
                return  # another model or weights file: start afresh
            keys = [str(k) for k in arrays["keys"]]
            feats, logits = arrays["features"], arrays["logits"]
            self.vectors = {k: (feats[i], logits[i]) for i, k in enumerate(keys)}
            self.index = {(str(p), int(s), int(m)): str(h) for p, s, m, h in
                          zip(arrays["stat_paths"], arrays["stat_sizes"], arrays["stat_mtimes"], arrays["stat_shas"])}
        except CacheTooLargeError as exc:
            self.vectors, self.index = {}, {}
            self.note = f"{self.file} ignored ({exc}); the embeddings are computed again"
        except (OSError, ValueError, KeyError, IndexError, EOFError, zipfile.BadZipFile):  # damaged: rebuilt, not fatal
            self.vectors, self.index = {}, {}

    def key_of(self, path: Path) -> str:
        """The sha256 of the file's (or record's) image bytes, from the stat index when the file's (or the record's
        container's) size and mtime are unchanged.

        Raises :class:`OSError` for a file that cannot be read, :class:`~cnnlab.errors.ImageDecodeError` for a
        record that cannot be."""
        record = split_record(path) if is_record(path) else None
        if record is None:
            stat = path.stat()
            stat_key: tuple[str, int, int] | None = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        else:
            container, key = record
            found = _container_stat(container)
            stat_key = None if found is None else (f"{Path(container).resolve()}{RECORD_SEP}{key}", *found)
        sha = self.index.get(stat_key) if stat_key is not None else None
        if sha is None:
            if record is None:
                sha = file_sha256(path)
            else:
                from cnnlab.imagedata.decode import read_regular_file

                sha = hashlib.sha256(read_regular_file(path)).hexdigest()
            if stat_key is not None:
                self.index[stat_key] = sha
        return sha

    def save(self) -> None:
        """Write atomically (a temporary file renamed over the old one)."""
        if not self.vectors:
            return
        self.file.parent.mkdir(parents=True, exist_ok=True)
        keys = sorted(self.vectors)
        stat_items = sorted(self.index.items())
        temp = self.file.with_name(f"{self.file.name}.{os.getpid()}.tmp.npz")  # two runs at once: one temp file each
        try:
            temp.unlink(missing_ok=True)  # never write through whatever lies there
            np.savez(
                temp,
                identity=np.array(json.dumps(self.identity, sort_keys=True)),
                keys=np.array(keys, dtype=str),
                features=np.stack([self.vectors[k][0] for k in keys]).astype(_STORED),
                logits=np.stack([self.vectors[k][1] for k in keys]).astype(_STORED),
                stat_paths=np.array([k[0] for k, _ in stat_items], dtype=str),
                stat_sizes=np.array([k[1] for k, _ in stat_items], dtype=np.int64),
                stat_mtimes=np.array([k[2] for k, _ in stat_items], dtype=np.int64),
                stat_shas=np.array([v for _, v in stat_items], dtype=str),
            )
            os.replace(temp, self.file)
        finally:  # a full disk mid-write leaves no temporary file behind
            temp.unlink(missing_ok=True)


def _container_stat(container: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a record's container: a file's own; a folder's (a saved dataset, a split of one) the
    total size and latest mtime of the files in it, hidden ones (review's own ``.cnnlab``) left out; ``None`` for
    a hub dataset (``hf:NAME``), whose records are read to be hashed every time."""
    if is_hf_name(container):
        return None
    stat = os.stat(container)
    if not os.path.isdir(container):
        return stat.st_size, stat.st_mtime_ns
    size, mtime = 0, 0
    with os.scandir(container) as entries:
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                info = entry.stat()
                size, mtime = size + info.st_size, max(mtime, info.st_mtime_ns)
    return size, mtime


def embed_images(
    model: Runtime,
    paths: Sequence[Path],
    *,
    labels: Sequence[str] | None = None,
    cache_dir: Path | None = None,
    batch_size: int = 32,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Embeddings:
    """Features (the classifier head's input) and logits of every file, embedding only what the cache lacks.

    ``cache_dir`` None: no cache. A cache that cannot be written is reported as a note, not an error.
    """
    from cnnlab.runtime.inference import run_inference

    progress = progress or Progress()
    cache = None
    keys: list[str | None] = [None] * len(paths)
    if cache_dir is not None:
        identity = model_identity(model)
        cache = EmbeddingCache(cache_path(cache_dir, model.name, model.backend.value), identity,
                               max_bytes=max(MIN_CACHE_BYTES, CACHE_BYTES_PER_IMAGE * len(paths)))
        for i, p in enumerate(paths):
            try:
                keys[i] = cache.key_of(p)
            except (OSError, ImageDecodeError):
                keys[i] = None  # unreadable: the decoder will say why
    todo = [i for i, k in enumerate(keys) if cache is None or k is None or k not in cache.vectors]
    found = {i for i in range(len(paths))} - set(todo)
    feature_rows: dict[int, np.ndarray] = {}
    logit_rows: dict[int, np.ndarray] = {}
    if cache is not None:
        for i in found:
            feature_rows[i], logit_rows[i] = cache.vectors[keys[i]]  # type: ignore[index]
    skipped: list[SkippedFile] = []
    if todo:
        todo_paths = [paths[i] for i in todo]
        todo_labels = [labels[i] for i in todo] if labels is not None else None
        for batch in run_inference(model, todo_paths, batch_size=batch_size, workers=workers, labels=todo_labels,
                                   progress=progress, task="embed", description=f"{model.name} embeddings",
                                   features=True):
            skipped.extend(batch.skipped)
            if batch.features is None:  # every file of the batch failed
                continue
            feats = batch.features.numpy().astype(_STORED)
            logits = batch.logits.numpy().astype(_STORED)
            for row, j in enumerate(batch.indices):
                i = todo[j]
                feature_rows[i], logit_rows[i] = feats[row], logits[row]
                if cache is not None and keys[i] is not None:
                    cache.vectors[keys[i]] = (feats[row], logits[row])  # type: ignore[index]
    notes = [cache.note] if cache is not None and cache.note else []
    if cache is not None and todo and not cache.file.is_symlink():
        try:
            cache.save()
        except OSError as exc:
            notes.append(f"embeddings not cached ({cache.file}: {exc})")
            progress.note(notes[-1], warning=True)
    result = _assemble(len(paths), feature_rows, logit_rows, skipped, len(found), len(todo) - len(skipped),
                       cache.file if cache is not None else None)
    result.notes = notes
    return result


def _assemble(n: int, feature_rows: dict[int, np.ndarray], logit_rows: dict[int, np.ndarray],
              skipped: list[SkippedFile], from_cache: int, computed: int, cache_file: Path | None) -> Embeddings:
    ok = np.zeros(n, dtype=bool)
    if not feature_rows:
        return Embeddings(np.zeros((n, 0), np.float32), np.zeros((n, 0), np.float32), ok, skipped, from_cache,
                          computed, cache_file)
    any_row = next(iter(feature_rows))
    features = np.zeros((n, feature_rows[any_row].shape[0]), np.float32)
    logits = np.zeros((n, logit_rows[any_row].shape[0]), np.float32)
    for i, row in feature_rows.items():
        features[i] = row.astype(np.float32)
        logits[i] = logit_rows[i].astype(np.float32)
        ok[i] = True
    return Embeddings(features, logits, ok, skipped, from_cache, computed, cache_file)
