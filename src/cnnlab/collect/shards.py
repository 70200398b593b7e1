"""Writing a collected set as shards: WebDataset tar files or Parquet files of ``shard_size`` images each.

At the sizes where a folder tree of loose files becomes millions of inodes, sets are stored as shards
(the layout img2dataset writes and timm, ``webdataset`` and ``datasets`` read). In ``OUT/shards/``:

* ``00000.tar``: per image, members ``KEY.<ext>`` (the verified bytes, unchanged), ``KEY.cls`` (the class
  index, ASCII digits) and ``KEY.json`` (:data:`JSON_FIELDS`); ``KEY`` is the first 16 hex digits of the
  image's sha256, as in the file names of a set of loose files;
* or ``00000.parquet``: one row per image, columns :data:`PARQUET_COLUMNS`; ``image`` is the struct
  ``{bytes, path}`` and ``label`` the class index, declared in the schema metadata as the ``datasets``
  ``Image`` and ``ClassLabel`` features, so ``datasets`` reads them as such;
* ``00000.manifest.csv``: the shard's images (:data:`SHARD_MANIFEST_COLUMNS`);
* ``classes.json``: the class names, a JSON list whose positions are the class indices. Classes are only
  ever appended, so the shards written by earlier runs keep their meaning.

A shard appears only when complete. Until then it is written in ``OUT/.journal/`` (``00003.tar``; for
Parquet, that tar beside ``shards/00003.parquet.tmp``), which is also the journal: a batch of images is
appended and fsync'd, and only then are their ``ok`` lines written to ``manifest.jsonl`` (naming shard and
member), so a line is never on disk before its image. A full shard is closed, fsync'd and renamed into
``shards/``. After a crash, even ``kill -9``, the next run reads the journal back (up to the member the crash
cut short) into the shard the lines name: nothing kept is fetched again and nothing is written twice. An
``ok`` line whose shard is missing and whose image is in no journal (a shard deleted by hand) is fetched again.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import queue
import re
import tarfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from cnnlab.collect.base import CollectError
from cnnlab.collect.config import OutputFormat
from cnnlab.collect.manifest import Manifest

log = logging.getLogger("cnnlab.collect")

#: The folder (in the dataset folder) that holds the shards, ``classes.json`` and the shard manifests.
SHARDS_DIR: Final[str] = "shards"
#: The folder (in the dataset folder) that holds the images of the shard being written.
JOURNAL_DIR: Final[str] = ".journal"
CLASSES_NAME: Final[str] = "classes.json"
#: Fields of a tar shard's ``KEY.json`` member.
JSON_FIELDS: Final[tuple[str, ...]] = (
    "key", "url", "label", "class_index", "width", "height", "sha256", "phash", "format", "bytes",
    "orientation", "source_page", "license", "query", "engine",
)  # fmt: skip
#: Columns of a Parquet shard.
PARQUET_COLUMNS: Final[tuple[str, ...]] = (
    "key", "image", "label", "url", "sha256", "phash", "width", "height", "format", "bytes",
)  # fmt: skip
#: Columns of a shard's ``NNNNN.manifest.csv``.
SHARD_MANIFEST_COLUMNS: Final[tuple[str, ...]] = (
    "key", "member", "label", "class_index", "url", "sha256", "width", "height", "bytes", "format",
)  # fmt: skip
#: Rows a Parquet shard holds in memory before writing them out (one row group).
PARQUET_ROWS_PER_GROUP: Final[int] = 100

_SUFFIX: Final[dict[OutputFormat, str]] = {OutputFormat.WEBDATASET: ".tar", OutputFormat.PARQUET: ".parquet"}
#: Images handed to the writer thread and not yet stored, at most (each held in memory until then).
_MAX_QUEUED: Final[int] = 256
_SHARD_NAME = re.compile(r"^(\d{5,})\.(tar|parquet)$")


def require_writer(fmt: OutputFormat) -> None:
    """Refuse a shard format whose library is not installed, before anything is fetched."""
    if fmt is not OutputFormat.PARQUET:
        return  # tar shards need only the standard library
    if importlib.util.find_spec("pyarrow") is None:
        raise CollectError("writing parquet shards needs pyarrow, which is not installed; install it with: "
                           "pip install 'cnnlab[hf]'")


def format_of(record: Mapping[str, Any]) -> OutputFormat:
    """The format an ``ok`` manifest line was written in."""
    shard = str(record.get("shard") or "")
    if shard.endswith(".parquet"):
        return OutputFormat.PARQUET
    if shard:
        return OutputFormat.WEBDATASET
    return OutputFormat.FILES


def check_same_format(out: Path, records: Iterable[Mapping[str, Any]], fmt: OutputFormat) -> None:
    """Refuse to continue a set in another format than it was started in: readers take one layout."""
    for rec in records:
        if rec.get("status") == "ok":
            found = format_of(rec)
            if found is not fmt:
                raise CollectError(
                    f"output folder {out} holds a set collected as {found.value}, not {fmt.value}: continue it with "
                    f"format {found.value}, or give another output folder"
                )
            return


_STOP: Final = object()


class ShardStore:
    """The shards of one dataset folder: which are complete, the one being written, its journal.

    The calling thread decides; a writer thread of its own stores: it appends a batch of kept images to the
    journal, fsyncs it once, then writes their ``ok`` lines to the manifest (one fsync for the batch), so a line
    is never on disk before its image. A full shard is completed in the same thread.
    """

    def __init__(self, out: Path, fmt: OutputFormat, shard_size: int, manifest: Manifest) -> None:
        if fmt is OutputFormat.FILES:
            raise ValueError("a ShardStore writes shards, not files")
        self.out = out
        self.fmt = fmt
        self.shard_size = shard_size
        self.manifest = manifest
        self.folder = out / SHARDS_DIR
        self.journal = out / JOURNAL_DIR
        self.classes: list[str] = []
        self.index = 0
        self.sealed_this_run: list[Path] = []
        self._count = 0  # images given to the shard being written (calling thread)
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=_MAX_QUEUED)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        # the writer thread's: the shard being written (its journal, its Parquet file) and its manifest lines
        self._tar: _TarShard | None = None
        self._parquet: _ParquetShard | None = None
        self._rows: list[dict[str, Any]] = []

    # -- the state on disk ---------------------------------------------------------------------

    def open(self, labels: Sequence[str]) -> None:
        """Make the folders, give ``labels`` class indices (kept in ``classes.json``) and pick the next shard."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self.journal.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob("*.tmp"):
            stale.unlink(missing_ok=True)
        self.classes = self._read_classes()
        added = [c for c in dict.fromkeys(labels) if c not in self.classes]
        if added or not (self.folder / CLASSES_NAME).is_file():
            self.classes.extend(added)
            _write_atomically(self.folder / CLASSES_NAME, json.dumps(self.classes, ensure_ascii=False).encode())
        done = [int(m.group(1)) for m in map(_SHARD_NAME.match, (p.name for p in self.folder.iterdir())) if m]
        self.index = max(done) + 1 if done else 0
        if self.fmt is OutputFormat.PARQUET:
            for shard in self.sealed():
                _relabel_parquet(shard, self.classes)

    def _read_classes(self) -> list[str]:
        path = self.folder / CLASSES_NAME
        if not path.is_file():
            if self.sealed():
                raise CollectError(f"{path} is missing, so the class indices of the shards in {self.folder} are "
                                   "unknown: put it back (or move the shards away) and run again")
            return []
        try:
            names = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CollectError(f"cannot read the class names {path}: {exc}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise CollectError(f"{path} must be a JSON list of class names")
        return list(names)

    def sealed(self) -> list[Path]:
        """The complete shards in the folder, in order."""
        if not self.folder.is_dir():
            return []
        suffix = _SUFFIX[self.fmt]
        return sorted(p for p in self.folder.iterdir() if _SHARD_NAME.match(p.name) and p.suffix == suffix)

    def is_sealed(self, shard: str) -> bool:
        """Whether the shard a manifest line names (``shards/00000.tar``) is complete on disk."""
        name = shard.removeprefix(f"{SHARDS_DIR}/")
        return bool(_SHARD_NAME.match(name)) and name.endswith(_SUFFIX[self.fmt]) and (self.folder / name).is_file()

    @property
    def shard(self) -> str:
        """The shard the next image goes into, as manifest lines name it (``shards/00003.tar``)."""
        return f"{SHARDS_DIR}/{self.index:05d}{_SUFFIX[self.fmt]}"

    # -- resuming ------------------------------------------------------------------------------

    def recover(self, unfinished: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Put the images of ``ok`` lines whose shard never completed, read back from the journal a crash left,
        into the shard now written; return the lines of those found (the others are fetched again).

        A line whose image goes into another shard than it names gets a new ``ok`` line that says where it is.
        """
        found: dict[str, bytes] = {}
        old = sorted(self.journal.glob("*.tar*"))
        for path in old:
            found.update(_read_journal(path))
        for path in old:  # set aside until the images are safe in the new journal
            if not path.name.endswith(".old"):
                path.replace(path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.old"))
        kept: list[dict[str, Any]] = []
        moved: list[dict[str, Any]] = []
        for record in unfinished:
            member = str(record.get("member") or "")
            data = found.get(member)
            if data is None or hashlib.sha256(data).hexdigest() != record.get("sha256"):
                continue
            if record.get("shard") != self.shard:
                record = {**record, "shard": self.shard, "path": f"{self.shard}/{member}"}
                moved.append(record)
            self.put(record, data, write_line=False)
            kept.append(record)
        self.flush()
        if moved:
            self.manifest.append_many(moved)
        for path in self.journal.glob("*.old"):
            path.unlink(missing_ok=True)
        return kept

    # -- writing (calling thread) --------------------------------------------------------------

    def class_index(self, label: str) -> int:
        try:
            return self.classes.index(label)
        except ValueError:
            raise CollectError(f"class {label!r} has no index in {self.folder / CLASSES_NAME}") from None

    def put(self, record: dict[str, Any], data: bytes, *, write_line: bool = True) -> None:
        """Keep an image: ``record`` is its ``ok`` line, naming :attr:`shard` and its member. The writer thread
        stores it, then writes the line; an error there (a full disk) is raised by a later call."""
        self._raise_error()
        if self._thread is None:
            self._thread = threading.Thread(target=self._write_loop, name="collect-shards", daemon=True)
            self._thread.start()
        self._queue.put(("image", record, data, self.class_index(str(record["class"])), write_line))
        self._count += 1
        if self._count >= self.shard_size:
            self._queue.put(("seal", self.shard))
            self.index += 1
            self._count = 0

    def flush(self) -> None:
        """Wait until every image given so far is stored and its line written."""
        if self._thread is not None:
            done = threading.Event()
            self._queue.put(("flush", done))
            while not done.wait(0.1):
                if not self._thread.is_alive():
                    break
        self._raise_error()

    def finish(self) -> None:
        """Complete the last shard of the run, wait for the writing to end, drop the journal folder (now empty)."""
        if self._count:
            self._queue.put(("seal", self.shard))
            self.index += 1
            self._count = 0
        self._stop()
        self._raise_error()
        with contextlib.suppress(OSError):
            self.journal.rmdir()

    def abandon(self) -> None:
        """Stop without completing the shard being written (the run failed): what is stored stays in the journal
        for the next run."""
        self._stop()
        for part in (self._tar, self._parquet):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.abandon()
        self._tar = self._parquet = None

    def _stop(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    # -- the writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        lines: list[dict[str, Any]] = []  # lines of images stored, not yet durable: written at the next commit
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < _MAX_QUEUED:
                    batch.append(self._queue.get_nowait())
            stop = False
            for item in batch:
                if item is _STOP:
                    stop = True
                    continue
                if self._error is None:  # after a failure nothing more is stored, and no line written
                    try:
                        self._handle(item, lines)
                    except BaseException as exc:  # noqa: BLE001 - handed to the calling thread, which raises it
                        self._error = exc
                if item[0] == "flush":
                    item[1].set()
            if self._error is None:
                try:
                    self._commit(lines)
                except BaseException as exc:  # noqa: BLE001 - as above
                    self._error = exc
            lines.clear()
            if stop:
                return

    def _handle(self, item: tuple[Any, ...], lines: list[dict[str, Any]]) -> None:
        kind = item[0]
        if kind == "image":
            _, record, data, class_index, write_line = item
            self._store(record, data, class_index)
            if write_line:
                lines.append(record)
        elif kind == "seal":
            self._commit(lines)
            self._seal(item[1])
        elif kind == "flush":
            self._commit(lines)

    def _store(self, record: dict[str, Any], data: bytes, class_index: int) -> None:
        shard = str(record["shard"])
        if self._tar is None:
            name = Path(shard).name
            self._tar = _TarShard(self.journal / (name if self.fmt is OutputFormat.WEBDATASET else f"{name}.tar"))
            if self.fmt is OutputFormat.PARQUET:
                self._parquet = _ParquetShard(self.out / f"{shard}.tmp", self.classes)
        self._tar.add(record, class_index, data)
        if self._parquet is not None:
            self._parquet.add(record, class_index, data)
        self._rows.append(_manifest_row(record, class_index))

    def _commit(self, lines: list[dict[str, Any]]) -> None:
        """Make the images stored so far durable, then write their lines."""
        if self._tar is not None:
            self._tar.sync()
        if lines:
            self.manifest.append_many(lines)
            lines.clear()

    def _seal(self, shard: str) -> None:
        """Complete a shard: its file fsync'd, its manifest, the rename, the journal emptied."""
        tar, parquet, self._tar, self._parquet = self._tar, self._parquet, None, None
        if tar is None:
            return
        final = self.out / shard
        buf = io.StringIO()
        table = csv.DictWriter(buf, fieldnames=SHARD_MANIFEST_COLUMNS, lineterminator="\n")
        table.writeheader()
        table.writerows(self._rows)
        self._rows = []
        _write_atomically(final.with_name(f"{final.stem}.manifest.csv"), buf.getvalue().encode("utf-8"))
        tar.close()
        if parquet is not None:
            parquet.close()
            os.replace(parquet.path, final)
            tar.path.unlink()
        else:
            os.replace(tar.path, final)
        _fsync_folder(self.folder)
        self.sealed_this_run.append(final)


def _read_journal(path: Path) -> dict[str, bytes]:
    """The image members of a journal (a tar that a crash may have cut short), by member name."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, mode="r|") as tar:
            for info in tar:
                if not info.isfile() or info.name.endswith((".cls", ".json")):
                    continue
                handle = tar.extractfile(info)
                if handle is not None:
                    found[info.name] = handle.read()
    except (tarfile.TarError, OSError, EOFError):
        pass  # the end a crash cut off: every member before it is whole
    return found


def _manifest_row(record: Mapping[str, Any], class_index: int) -> dict[str, Any]:
    return {
        "key": Path(str(record["member"])).stem,
        "member": record["member"],
        "label": record["class"],
        "class_index": class_index,
        **{k: record.get(k) for k in ("url", "sha256", "width", "height", "bytes", "format")},
    }


class _TarShard:
    """A tar shard being written: ``KEY.<ext>``, ``KEY.cls``, ``KEY.json`` per image, one after the other.

    The members are laid out as ``webdataset.TarWriter`` lays them out (ustar headers, a sample's members
    together and in sorted order, read-only modes), written with the standard library's ``tarfile``, which
    is what ``TarWriter`` wraps: importing ``webdataset`` imports torch, a cost of seconds that every run
    would pay before its first image (``benchmarks/bench_collect_shards.py``).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh = path.open("wb")
        self._tar = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)  # noqa: SIM115 - closed in close()

    def add(self, record: Mapping[str, Any], class_index: int, data: bytes) -> None:
        member = Path(str(record["member"]))
        key = member.stem
        meta = {**{k: record.get(k) for k in JSON_FIELDS}, "key": key, "label": record["class"],
                "class_index": class_index}
        parts = {
            member.suffix.lstrip("."): data,
            "cls": str(class_index).encode("ascii"),
            "json": json.dumps(meta, ensure_ascii=False).encode("utf-8"),
        }
        now = time.time()
        for ext in sorted(parts):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(parts[ext]), now, 0o444
            info.uname = info.gname = "bigdata"
            self._tar.addfile(info, io.BytesIO(parts[ext]))

    def sync(self) -> None:
        """Make every member added so far durable (the tar is then a journal a crash cannot lose)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._tar.close()  # the end-of-archive blocks; the file itself stays open
        self.sync()
        self._fh.close()

    def abandon(self) -> None:
        self._fh.close()


def _hf_features(classes: Sequence[str]) -> dict[str, Any]:
    """The ``datasets`` features of a Parquet shard, as its schema metadata declares them."""
    value = {"_type": "Value"}
    return {
        "key": {"dtype": "string", **value},
        "image": {"_type": "Image"},
        "label": {"names": list(classes), "_type": "ClassLabel"},
        **{name: {"dtype": "string", **value} for name in ("url", "sha256", "phash")},
        "width": {"dtype": "int32", **value},
        "height": {"dtype": "int32", **value},
        "format": {"dtype": "string", **value},
        "bytes": {"dtype": "int64", **value},
    }


def _parquet_schema(classes: Sequence[str]) -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("key", pa.string()),
            pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
            pa.field("label", pa.int64()),
            pa.field("url", pa.string()),
            pa.field("sha256", pa.string()),
            pa.field("phash", pa.string()),
            pa.field("width", pa.int32()),
            pa.field("height", pa.int32()),
            pa.field("format", pa.string()),
            pa.field("bytes", pa.int64()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": _hf_features(classes)}})},
    )


def _relabel_parquet(path: Path, classes: Sequence[str]) -> None:
    """Give a complete Parquet shard the class names of the whole set, when a later run added classes.

    ``datasets`` takes the features of a set of Parquet files from the first, so every shard must name every
    class. The shard is copied a row group at a time with the new names and renamed over the old one.
    """
    import pyarrow.parquet as pq

    source = pq.ParquetFile(path)
    meta = (source.schema_arrow.metadata or {}).get(b"huggingface", b"{}")
    try:
        names = json.loads(meta)["info"]["features"]["label"]["names"]
    except (ValueError, KeyError, TypeError):
        names = None
    if names == list(classes):
        return
    schema = _parquet_schema(classes)
    temp = path.with_name(f"{path.name}.tmp")
    with pq.ParquetWriter(str(temp), schema) as writer:
        for group in range(source.num_row_groups):
            writer.write_table(source.read_row_group(group).cast(schema))
    source.close()
    _fsync_file(temp)
    os.replace(temp, path)
    _fsync_folder(path.parent)


class _ParquetShard:
    """A Parquet shard being written, a row group at a time, with the ``datasets`` features in its schema."""

    def __init__(self, path: Path, classes: Sequence[str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = path
        self._pa = pa
        self.schema = _parquet_schema(classes)
        self._writer = pq.ParquetWriter(str(path), self.schema)
        self._rows: dict[str, list[Any]] = {name: [] for name in PARQUET_COLUMNS}

    def add(self, record: Mapping[str, Any], class_index: int, data: bytes) -> None:
        member = str(record["member"])
        row = {
            "key": Path(member).stem, "image": {"bytes": data, "path": member}, "label": class_index,
            **{k: record.get(k) for k in ("url", "sha256", "phash", "width", "height", "format", "bytes")},
        }  # fmt: skip
        for name in PARQUET_COLUMNS:
            self._rows[name].append(row[name])
        if len(self._rows["key"]) >= PARQUET_ROWS_PER_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._rows["key"]:
            self._writer.write_table(self._pa.Table.from_pydict(self._rows, schema=self.schema))
            self._rows = {name: [] for name in PARQUET_COLUMNS}

    def close(self) -> None:
        self._flush()
        self._writer.close()
        _fsync_file(self.path)

    def abandon(self) -> None:
        self._writer.close()


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system can: not on Windows)."""
    with contextlib.suppress(OSError):
        _fsync_file(folder)


def _write_atomically(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{path.name}.tmp")
    with temp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(temp, path)
    _fsync_folder(path.parent)
