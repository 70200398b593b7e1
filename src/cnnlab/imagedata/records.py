"""Reading one record of a dataset stored as records, by its name ``CONTAINER#KEY``, in any process.

Record names (:mod:`cnnlab.imagedata.sources` makes them) serve as the "paths" of their images everywhere a file path
goes. A record is read as bytes from its container when it is decoded: tar members and Arrow rows by offset (an
index of (file, offset, size) built once by walking the tar headers or the Arrow buffers: nothing decoded, no image
bytes kept), Parquet rows from their row group (its pages are compressed; a few row groups are kept per process).
:func:`cnnlab.imagedata.decode.read_regular_file` calls :func:`read_record`, so the bytes meet the guards of a file.

The containers a process opened are kept per process (:func:`open_containers`, called before a loader's workers
start, so that they inherit the indexes); a process that meets a record of a container it has not opened (a bench
worker) opens it then, with the image column named by its parent (:func:`remember_image_column`) or found from the
features.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cnnlab.errors import DatasetError, ImageDecodeError
from cnnlab.imagedata.hfdata import HF_PREFIX

#: Separates a container from the key of one of its records.
RECORD_SEP = "#"
#: Prefix of a Hugging Face dataset name: ``hf:NAME[:CONFIG][/SPLIT]``.
#: Parquet row groups kept per file and process (each holds the image bytes of its rows).
_ROW_GROUPS_KEPT = 1
#: The environment variable through which a process tells the processes it starts which image column a
#: container's records use, when it was named rather than found (a JSON object: container -> column).
IMAGE_COLUMNS_ENV = "CNNLAB_RECORD_IMAGE_COLUMNS"


def is_hf_name(source: str | Path) -> bool:
    return str(source).startswith(HF_PREFIX)


class Container:
    """Where a dataset's records live (a shard, a split's Arrow files, a Parquet file): reads one by its key."""

    def read(self, key: str, max_bytes: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError


def _pread(path: str, offset: int, size: int, max_bytes: int) -> bytes:
    if size > max_bytes:
        raise ImageDecodeError("too-large", f"{size:,} bytes exceeds the limit of {max_bytes:,}")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise ImageDecodeError("missing", f"{exc.strerror or exc}: {path}") from None
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{exc.strerror or exc}: {path}") from None
    finally:
        os.close(fd)
    if len(data) < size:
        raise ImageDecodeError("truncated", f"{path} ends {size - len(data):,} bytes into this record")
    return data


class ShardContainer(Container):
    """A tar shard: key -> (offset, size) of its image member."""

    def __init__(self, path: str, index: dict[str, tuple[int, int, str]]) -> None:
        self.path = path
        self.index = {k: (off, size) for k, (off, size, _) in index.items()}

    @classmethod
    def open(cls, path: str) -> ShardContainer:
        from cnnlab.imagedata.shards import walk_shard

        return cls(path, walk_shard(Path(path)).images)

    def read(self, key: str, max_bytes: int) -> bytes:
        where = self.index.get(key)
        if where is None:
            raise ImageDecodeError("missing", f"{self.path} has no image member with key {key!r}")
        return _pread(self.path, where[0], where[1], max_bytes)


class ArrowContainer(Container):
    """The Arrow files of a dataset split: row -> (file, offset, size) of the image bytes, found from the
    buffers of the memory-mapped files (uncompressed Arrow, as ``datasets`` writes it); rows that only name a
    file (an ``Image`` feature stored as a path) keep that path, which is read only inside ``roots``
    (:func:`read_named_file`)."""

    def __init__(self, files: list[str], file_of: Any, offsets: Any, sizes: Any, paths: dict[int, str],
                 roots: tuple[str, ...] = ()) -> None:
        self.files = files
        self.file_of, self.offsets, self.sizes = file_of, offsets, sizes
        self.paths = paths
        self.roots = roots

    @classmethod
    def from_dataset(cls, name: str, dataset: Any, image_column: str) -> ArrowContainer:
        files = [f["filename"] for f in dataset.cache_files]
        if not files:
            raise DatasetError(f"{name} is held in memory, not in Arrow files: save it with save_to_disk first")
        container = cls.from_files(files, image_column, name)
        container.roots = dataset_roots(name)
        if len(container.offsets) != len(dataset):
            raise DatasetError(f"{name}: its Arrow files hold {len(container.offsets):,} rows, the dataset "
                               f"{len(dataset):,}: a selection of rows is not supported; save it with save_to_disk")
        return container

    @classmethod
    def from_files(cls, files: list[str], image_column: str, where: str) -> ArrowContainer:
        import numpy as np
        import pyarrow as pa

        file_of: list[Any] = []
        offsets: list[Any] = []
        sizes: list[Any] = []
        paths: dict[int, str] = {}
        row = 0
        for number, file in enumerate(files):
            with pa.memory_map(file) as mm:
                whole = mm.read_buffer(mm.size())
                base, end = whole.address, whole.address + whole.size
                mm.seek(0)
                try:
                    reader = pa.ipc.open_stream(mm)
                except pa.ArrowInvalid:
                    mm.seek(0)
                    reader = pa.ipc.open_file(mm)
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) if isinstance(
                    reader, pa.ipc.RecordBatchFileReader) else reader
                for batch in batches:
                    column = batch.column(batch.schema.get_field_index(image_column))
                    if pa.types.is_struct(column.type):
                        data_arr = column.field("bytes")
                        path_arr = column.field("path") if column.type.get_field_index("path") >= 0 else None
                    else:
                        data_arr, path_arr = column, None
                    n = len(data_arr)
                    bufs = data_arr.buffers()
                    wide = pa.types.is_large_binary(data_arr.type)
                    off = np.frombuffer(bufs[1], dtype=np.int64 if wide else np.int32)[
                        data_arr.offset:data_arr.offset + n + 1].astype(np.int64) if bufs[1] is not None else \
                        np.zeros(n + 1, dtype=np.int64)
                    data_addr = bufs[2].address if len(bufs) > 2 and bufs[2] is not None else base
                    if not base <= data_addr <= end:
                        raise DatasetError(f"{where}: {file} is compressed Arrow; cnnlab reads uncompressed Arrow "
                                           "(what datasets writes) or Parquet")
                    valid = data_arr.is_valid().to_numpy(zero_copy_only=False)
                    if column is not data_arr:  # a null image (the whole struct) has no bytes whatever its child says
                        valid = valid & column.is_valid().to_numpy(zero_copy_only=False)
                    size = off[1:] - off[:-1]
                    size[~valid] = -1
                    offsets.append(data_addr - base + off[:-1])
                    sizes.append(size)
                    file_of.append(np.full(n, number, dtype=np.int32))
                    if not valid.all() and path_arr is not None:
                        for i in np.flatnonzero(~valid):
                            value = path_arr[int(i)].as_py()
                            if value:
                                paths[row + int(i)] = value
                    row += n

        def cat(parts: list[Any], dtype: Any) -> Any:
            return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)

        return cls(list(files), cat(file_of, np.int32), cat(offsets, np.int64), cat(sizes, np.int64), paths)

    def rows_without_image(self) -> list[int]:
        return [int(i) for i in (self.sizes < 0).nonzero()[0] if int(i) not in self.paths]

    def read(self, key: str, max_bytes: int) -> bytes:
        row = _row_number(key, len(self.offsets))
        if row in self.paths:
            return read_named_file(self.paths[row], self.roots, max_bytes)
        size = int(self.sizes[row])
        if size < 0:
            raise ImageDecodeError("empty", "no image in this row")
        return _pread(self.files[int(self.file_of[row])], int(self.offsets[row]), size, max_bytes)


def dataset_roots(name: str) -> tuple[str, ...]:
    """The folders inside which a row of dataset ``name`` that names a file instead of holding its bytes may be read
    (the first one is where a relative path is taken from): a saved dataset's folder (the whole ``DatasetDict``'s
    for one of its splits); for a dataset loaded by ``datasets.load_dataset``, the folder it was loaded from when
    local, and the caches where ``datasets`` and the Hub keep downloaded and extracted files."""
    if not is_hf_name(name):
        folder = Path(name)
        return (str(folder), str(folder.parent)) if (folder.parent / "dataset_dict.json").is_file() else (str(folder),)
    from cnnlab.imagedata.hfdata import parse_hf_name

    roots: list[str] = []
    local = parse_hf_name(name)[0]
    if local.startswith(("/", ".")):
        roots.append(local)
    with contextlib.suppress(ImportError, AttributeError):
        from datasets import config

        roots += [str(config.HF_DATASETS_CACHE), str(config.DOWNLOADED_DATASETS_PATH),
                  str(config.EXTRACTED_DATASETS_PATH)]
    with contextlib.suppress(ImportError, AttributeError):
        from huggingface_hub import constants

        roots.append(str(constants.HF_HUB_CACHE))
    return tuple(roots)


def read_named_file(value: str, roots: tuple[str, ...], max_bytes: int) -> bytes:
    """The bytes of the file that a dataset row names instead of holding its image's bytes, when that file lies
    inside one of ``roots`` (links resolved; a relative path is taken from the first root). A row naming any other
    file is not read: a dataset row carries its image, and a file elsewhere (``/etc/passwd``) is none of its business.

    Raises:
        ImageDecodeError: ``outside-dataset``, or what :func:`cnnlab.imagedata.filebytes.read_file_bytes` raises.
    """
    from cnnlab.imagedata.filebytes import read_file_bytes

    path = Path(value)
    if "://" not in value and roots:
        real = os.path.realpath(path if path.is_absolute() else Path(roots[0]) / path)
        if any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in map(os.path.realpath, roots)):
            return read_file_bytes(real, max_bytes)
    raise ImageDecodeError("outside-dataset", f"the row holds no image bytes, only the file name {value!r}, which is "
                           f"outside the dataset's folder {roots[0] if roots else ''}: not read (a dataset row must "
                           "carry its image's bytes)")


def _row_number(key: str, rows: int) -> int:
    if not key.isdigit() or int(key) >= rows:
        raise ImageDecodeError("missing", f"no row {key} (the set has {rows:,} rows)")
    return int(key)


class ParquetContainer(Container):
    """A Parquet file: rows read from their row group (pages are compressed: no offsets to read at); the row
    group last read is kept (:data:`_ROW_GROUPS_KEPT`), so reading in order costs one read of each row group per
    process, and memory stays within a row group (``datasets`` writes image row groups of at most 100 MB)."""

    def __init__(self, path: str, image_column: str) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.image_column = image_column
        meta = pq.ParquetFile(path).metadata
        self.starts = [0]
        for i in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(i).num_rows)
        self.kept: OrderedDict[int, Any] = OrderedDict()
        self.lock = threading.Lock()

    def read(self, key: str, max_bytes: int) -> bytes:
        import bisect

        import pyarrow as pa
        import pyarrow.parquet as pq

        row = _row_number(key, self.starts[-1])
        group = bisect.bisect_right(self.starts, row) - 1
        with self.lock:
            column = self.kept.get(group)
            if column is None:
                while len(self.kept) >= _ROW_GROUPS_KEPT:  # let go first: never two row groups more than kept
                    self.kept.popitem(last=False)
                    pa.default_memory_pool().release_unused()  # its memory back to the system, not kept by the pool
                try:
                    table = pq.ParquetFile(self.path).read_row_group(group, columns=[self.image_column])
                except Exception as exc:  # noqa: BLE001 - a damaged file: this record cannot be read
                    raise ImageDecodeError("unreadable", f"{self.path}: row group {group}: {exc}") from None
                column = table.column(0)
                self.kept[group] = column
            else:
                self.kept.move_to_end(group)
        value = column[row - self.starts[group]].as_py()
        if isinstance(value, dict):
            data, path = value.get("bytes"), value.get("path")
        else:
            data, path = value, None
        if data is None and path:
            return read_named_file(path, (str(Path(self.path).parent),), max_bytes)
        if data is None:
            raise ImageDecodeError("empty", "no image in this row")
        if len(data) > max_bytes:
            raise ImageDecodeError("too-large", f"{len(data):,} bytes exceeds the limit of {max_bytes:,}")
        return bytes(data)


_OPEN: dict[str, Container] = {}
_OPEN_LOCK = threading.Lock()


def remember(name: str, container: Container) -> None:
    with _OPEN_LOCK:
        _OPEN[name] = container


def split_record(path: str | Path) -> tuple[str, str] | None:
    """``(container, key)`` of a record name, or ``None`` when ``path`` is not one (no ``#``).

    A shard's keys may hold ``#`` (``shard.tar#a#b`` is key ``a#b``): the container is the first part ending in
    ``.tar`` that is a shard (opened, or a file); other containers' keys are row numbers, after the last ``#``."""
    text = str(path)
    if RECORD_SEP not in text:
        return None
    at = text.find(RECORD_SEP)
    while at > 0:
        container = text[:at]
        if container.lower().endswith(".tar") and (container in _OPEN or os.path.isfile(container)):
            key = text[at + 1:]
            return (container, key) if key else None
        at = text.find(RECORD_SEP, at + 1)
    container, key = text.rsplit(RECORD_SEP, 1)
    return (container, key) if container and key else None


def is_record(path: str | Path) -> bool:
    """``path`` names a record (``CONTAINER#KEY``) rather than a file (a file of that name wins)."""
    parts = split_record(path)
    if parts is None or os.path.lexists(path):
        return False
    container = parts[0]
    return is_hf_name(container) or os.path.exists(container)


#: Held while a container is opened: threads decoding records of the same container at once open it once.
_OPENING_LOCK = threading.Lock()


def _open(name: str) -> Container:
    with _OPEN_LOCK:
        found = _OPEN.get(name)
    if found is not None:
        return found
    with _OPENING_LOCK:
        with _OPEN_LOCK:
            found = _OPEN.get(name)
        return found if found is not None else _open_new(name)


def _open_new(name: str) -> Container:
    lower = name.lower()
    container: Container
    if lower.endswith(".tar"):
        container = ShardContainer.open(name)
    elif lower.endswith(".parquet"):
        container = ParquetContainer(name, _named_image_column(name) or _parquet_image_column(name))
    elif is_hf_name(name) or Path(name).is_dir():
        from cnnlab.imagedata.hfdata import find_columns, load_arrow_dataset

        dataset, _ = load_arrow_dataset(name, "hf" if is_hf_name(name) else "saved", None)
        image_col = _named_image_column(name) or find_columns(dataset.features, dataset.column_names, None, None,
                                                              name, labelled=False)[0]
        container = ArrowContainer.from_dataset(name, dataset, image_col)
    else:
        raise ImageDecodeError("missing", f"{name} is not a dataset, Parquet file or shard")
    remember(name, container)
    return container


def _parquet_image_column(path: str) -> str:
    import pyarrow.parquet as pq

    from cnnlab.imagedata.hfdata import features_of, find_columns

    schema = pq.read_schema(path)
    return find_columns(features_of(schema), schema.names, None, None, path, labelled=False)[0]


def remember_image_column(container: str, column: str) -> None:
    """Tell the processes this one starts (bench workers) that ``container``'s images are in ``column``."""
    named = json.loads(os.environ.get(IMAGE_COLUMNS_ENV) or "{}")
    if named.get(container) != column:
        os.environ[IMAGE_COLUMNS_ENV] = json.dumps(named | {container: column})


def _named_image_column(container: str) -> str | None:
    try:
        value = json.loads(os.environ.get(IMAGE_COLUMNS_ENV) or "{}").get(container)
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def read_record(path: str | Path, max_bytes: int) -> bytes:
    """The image bytes of record ``path`` (``CONTAINER#KEY``), at most ``max_bytes``.

    Raises:
        ImageDecodeError: ``missing`` (no such record or container), ``too-large``, ``truncated``, ``unreadable``.
    """
    parts = split_record(path)
    if parts is None:
        raise ImageDecodeError("missing", f"not a record: {path}")
    container_name, key = parts
    try:
        container = _open(container_name)
    except DatasetError as exc:
        raise ImageDecodeError("missing", str(exc)) from None
    return container.read(key, max_bytes)


def open_containers(paths: Iterable[str | Path]) -> None:
    """Open (index) the containers of the records among ``paths`` in this process, once each, so that the
    loader's worker processes started after this inherit them instead of each indexing them again."""
    seen: set[str] = set()
    for path in paths:
        text = str(path)
        parts = split_record(text) if RECORD_SEP in text else None
        if parts is None:
            continue
        container = parts[0]
        if container in seen:
            continue
        seen.add(container)
        if is_record(text):
            with contextlib.suppress(DatasetError, ImageDecodeError):  # each record reports it when it is read
                _open(container)
