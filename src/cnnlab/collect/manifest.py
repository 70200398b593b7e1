"""The append-only manifest (``manifest.jsonl``) and the lock that keeps one collect per folder.

One JSON object per line, one line per candidate; each line is flushed and fsync'd before the
next candidate is decided, so after a crash (even ``kill -9``) the manifest holds every decision
made. A line cut short by the crash is dropped when the manifest is next opened.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Final

from cnnlab import outputs as output_files
from cnnlab.collect.base import CollectError, strip_credentials

MANIFEST_NAME: Final[str] = "manifest.jsonl"

#: Keys of every manifest line, in order. ``path`` is relative to the dataset folder and is ""
#: unless ``status`` is ``ok``; ``label`` repeats ``class`` so the file reads as a
#: ``path,label`` manifest (:func:`cnnlab.imagedata.datasets.scan_dataset` keeps only ``ok`` lines).
FIELDS: Final[tuple[str, ...]] = (
    "class",
    "label",
    "query",
    "engine",
    "url",
    "source_page",
    "final_url",
    "status",
    "reason",
    "detail",
    "path",
    "sha256",
    "phash",
    "width",
    "height",
    "bytes",
    "format",
    "orientation",
    "duplicate_of",
    "license",
    "http_status",
    "attempts",
    "timestamp",
)

#: Keys a line has only when set: where an image of a sharded set is (``shard``: the shard file relative to
#: the dataset folder, ``shards/00000.tar``; ``member``: the image's name in it, ``<key>.<ext>``), so lines of
#: a set of loose files stay as they were.
OPTIONAL_FIELDS: Final[tuple[str, ...]] = ("shard", "member")

#: Fields that hold URLs, or text that may quote one.
_URL_FIELDS: Final[tuple[str, ...]] = ("url", "source_page", "final_url", "detail")

log = logging.getLogger("cnnlab.collect")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def make_record(**values: Any) -> dict[str, Any]:
    """A manifest line with every key of :data:`FIELDS` (missing ones ``None``), and those of
    :data:`OPTIONAL_FIELDS` that are given."""
    unknown = set(values) - set(FIELDS) - set(OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"unknown manifest fields: {sorted(unknown)}")
    record = {key: values.get(key) for key in FIELDS}
    record.update((key, values[key]) for key in OPTIONAL_FIELDS if values.get(key) is not None)
    for key in _URL_FIELDS:  # where a URL can carry credentials: never written to the manifest
        value = record[key]
        if isinstance(value, str):
            record[key] = strip_credentials(value)
    record["label"] = record["class"]
    record["path"] = record["path"] or ""
    record["timestamp"] = record["timestamp"] or now_iso()
    return record


def encode_line(record: Mapping[str, Any]) -> bytes:
    """One manifest line: JSON in UTF-8. A file or class name that is not valid UTF-8 (surrogate
    escapes from the file system) is written as JSON ``\\udcXX`` escapes, which read back as the same
    name, instead of failing the run."""
    text = json.dumps(dict(record), ensure_ascii=False, default=str)
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        data = json.dumps(dict(record), ensure_ascii=True, default=str).encode("ascii")
    return data + b"\n"


def read_manifest(path: str | Path) -> list[dict[str, Any]]:
    """All complete lines of a manifest (a torn or corrupt line is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    records: list[dict[str, Any]] = []
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.endswith(b"\n"):
                log.warning("%s:%d: dropping an incomplete last line (interrupted write)", path, n)
                break
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError):
                log.warning("%s:%d: skipping a line that is not JSON", path, n)
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


class Manifest:
    """Appends manifest lines durably; thread-safe."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh: Any = None

    def open(self) -> list[dict[str, Any]]:
        """Repair a torn last line, open for appending, and return the existing lines."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        records = read_manifest(self.path)
        if self.path.exists():
            data = self.path.read_bytes()
            if data and not data.endswith(b"\n"):
                with self.path.open("r+b") as fh:
                    fh.truncate(data.rfind(b"\n") + 1)
        self._fh = self.path.open("ab", buffering=0)  # unbuffered: a failed write is not retried at close
        return records

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one line and fsync it. Raises ``OSError`` (a full disk): the line may be cut short,
        which the next :meth:`open` repairs."""
        self.append_many([record])

    def append_many(self, records: Sequence[Mapping[str, Any]]) -> None:
        """Write several lines and fsync them once (see :meth:`append`)."""
        line = b"".join(encode_line(record) for record in records)
        with self._lock:
            if self._fh is None:
                raise RuntimeError("manifest is not open")
            view = memoryview(line)
            while view:
                written = self._fh.write(view)
                view = view[written or len(view) :]
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                fh, self._fh = self._fh, None
                fh.close()

    def __enter__(self) -> Manifest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FolderLock(output_files.FolderLock):
    """An exclusive lock on a dataset folder (``.lock``), released by the OS if the process dies."""

    def __init__(self, folder: str | Path) -> None:
        super().__init__(folder, holder="another `cnnlab collect`", error=CollectError)


