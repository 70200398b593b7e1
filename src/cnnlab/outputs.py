"""Writing output files and folders safely: one :class:`OutputFolder` rule set, atomic writes, an advisory lock.

* :class:`OutputFolder`: every rule an output folder follows (not a file, not inside the data, not
  holding an earlier run unless replaced, one writer at a time), checked before any work; every job
  uses it, so the rules live in one place.

* :func:`atomic_open` / :func:`atomic_write`: the file appears complete or not at all (a temporary
  file in the same folder, flushed and fsync'd, then renamed over the target). A full disk or a kill
  mid-write leaves the old file (or none), never a cut-off one; a killed writer's temporary file is
  removed by the next write.
* :func:`check_output_folder`: create the folder and prove it writable *before* any long work, so
  an unwritable or full ``--out`` is reported in a second, not after an hour of measuring.
* :class:`FolderLock`: one writer per folder at a time (``fcntl.flock`` on ``FOLDER/.lock``; the OS
  releases it if the process dies).

Text is written as UTF-8 with ``surrogateescape``: a file name that is not valid UTF-8 (decoded by
Python with surrogate escapes) is written back as its original bytes instead of failing.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from cnnlab.errors import CnnlabError, OutputError, UsageError

#: How text output files are encoded (see the module docstring).
TEXT_ENCODING = "utf-8"
TEXT_ERRORS = "surrogateescape"


def describe_os_error(exc: OSError, path: Path) -> str:
    """One sentence for an OSError met while writing ``path``."""
    if exc.errno == errno.ENOSPC:
        return f"the disk holding {path} is full"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {path}"
    if exc.errno == errno.ENAMETOOLONG:
        return f"a file name is too long for the file system: {path}"
    return f"cannot write {path}: {exc.strerror or exc}"


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file ``.NAME.PID.tmp`` next to ``path``; on success it replaces ``path`` atomically.

    ``mode`` is ``"w"`` (text: UTF-8 with surrogate escapes unless ``encoding``/``errors`` are given)
    or ``"wb"``. The file is fsync'd before the rename and the folder after it, so even a power cut
    leaves the old file or the new one. On any exception the temporary file is removed and ``path``
    is left as it was; an ``OSError`` (disk full, no permission) becomes an :class:`OutputError`.
    Temporary files of ``path`` left by killed processes are removed first.
    """
    target = Path(path)
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", TEXT_ENCODING)
        kwargs.setdefault("errors", TEXT_ERRORS)
        kwargs.setdefault("newline", "")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(target)
        with tmp.open(mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        kept = f"; the previous {target.name} is intact" if target.exists() else ""
        raise OutputError(describe_os_error(exc, target) + kept) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(target.parent)


def remove_stale_temp_files(path: str | Path) -> list[Path]:
    """Delete the ``.NAME.PID.tmp`` files of ``path`` whose writing process no longer runs; return them."""
    path = Path(path)
    removed = []
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid_text = tmp.name[len(path.name) + 2 : -len(".tmp")]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _process_alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists (another user's), or cannot tell: leave its file alone
    return True


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_open`)."""
    target = Path(path)
    with atomic_open(target, "wb" if isinstance(data, bytes) else "w") as fh:
        fh.write(data)
    return target


def check_output_path(path: str | Path, *, what: str = "output folder") -> Path:
    """Raise :class:`UsageError` if ``path`` cannot become a folder because it, or a folder above it, is a
    file (``results.csv``, ``results.csv/run1``). Creates nothing."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} exists and is not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {folder}: {parent} is a file, not a folder")
            break
    return folder


def check_output_folder(path: str | Path, *, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove that a file can be written in it.

    Raises:
        UsageError: ``path`` or a folder above it is a file (:func:`check_output_path`).
        OutputError: the folder cannot be created or written (no permission, disk full).
    """
    folder = check_output_path(path, what=what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-") as fh:
            fh.write(b"\0" * 4096)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        raise OutputError(f"{what}: {describe_os_error(exc, folder)}") from None
    return folder


#: The folder locks this process holds; a forked child (a DataLoader worker) closes its copies at once.
_HELD_LOCKS: weakref.WeakSet[FolderLock] = weakref.WeakSet()


def _drop_locks_in_child() -> None:
    """In a forked child: close the inherited lock files. A flock belongs to the open file, which the child
    shares; a worker that outlived a killed parent would otherwise hold the folder locked."""
    for lock in list(_HELD_LOCKS):
        if lock._fh is not None:
            with contextlib.suppress(OSError):
                lock._fh.close()
            lock._fh = None
    _HELD_LOCKS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_locks_in_child)


class FolderLock:
    """An exclusive advisory lock on a folder (``FOLDER/.lock``), released by the OS when the process ends,
    however it ends (child processes it forks, such as DataLoader workers, do not keep it).

    When another process holds it, ``error`` (an :class:`OutputError` by default) says that ``holder``
    is writing there.
    """

    def __init__(self, folder: str | Path, *, holder: str = "another cnnlab command",
                 error: type[CnnlabError] = OutputError) -> None:
        self.path = Path(folder) / ".lock"
        self.holder = holder
        self.error = error
        self._fh: IO[str] | None = None

    def __enter__(self) -> FolderLock:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a+")
        except OSError as exc:
            raise OutputError(describe_os_error(exc, self.path)) from None
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock; best effort
            return self
        try:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise self.error(f"{self.holder} is writing to {self.path.parent} (lock {self.path}); "
                             "wait for it to finish or stop it first") from None
        _HELD_LOCKS.add(self)
        return self

    def __exit__(self, *exc: object) -> None:
        _HELD_LOCKS.discard(self)
        if self._fh is not None:
            self._fh.close()  # closing releases the flock
            self._fh = None


def _inside(path: Path, folder: Path) -> tuple[str, ...] | None:
    """``path``'s parts below ``folder`` (both resolved), or ``None`` when it is not inside it."""
    try:
        return path.resolve().relative_to(folder.resolve()).parts
    except (ValueError, OSError, RuntimeError):
        return None


#: Image file endings that make a folder look like a class of a class-folder tree (see :func:`_class_folder_tree`).
_IMAGE_ENDINGS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif")


def _class_folder_tree(folder: Path, *, look: int = 64) -> bool:
    """Whether ``folder`` holds a visible sub-folder with an image file directly in it (looking at a bounded
    number of entries: this is a cheap test, not a scan)."""
    try:
        subfolders = [e for _, e in zip(range(look), os.scandir(folder)) if e.is_dir() and not e.name.startswith(".")]
        for sub in subfolders:
            for _, entry in zip(range(look), os.scandir(sub.path)):
                if entry.name.lower().endswith(_IMAGE_ENDINGS):
                    return True
    except OSError:
        return False
    return False


#: File endings of the containers of a dataset stored as records (:mod:`cnnlab.imagedata.sources`).
_RECORD_ENDINGS = (".parquet", ".tar")


def _reads_only_its_own_files(data: Path) -> bool:
    """Whether the job reads nothing of what may be written in or beside ``data``: one file of records (a Parquet
    file, a tar shard: that file only, never its folder), or a folder written by ``datasets``' ``save_to_disk``
    (its ``state.json`` lists its Arrow files; nothing else in the folder is read)."""
    if data.is_file():
        return data.suffix.lower() in _RECORD_ENDINGS
    return data.is_dir() and ((data / "state.json").is_file() or (data / "dataset_dict.json").is_file())


def _holds_records(folder: Path) -> bool:
    try:
        return any(e.name.lower().endswith(_RECORD_ENDINGS) for _, e in zip(range(4096), os.scandir(folder)))
    except OSError:
        return False


@dataclass(frozen=True)
class OutputFolder:
    """The one place that says whether a folder may receive a job's outputs, and that prepares it.

    Every job (bench, train, review, lr_find, export) follows the same steps: :meth:`check` before any
    work (creates nothing), :meth:`create` when the work is about to start, :meth:`lock` for the run,
    :meth:`clear_previous` just before writing. The rules:

    * the path is not a file, does not lie under a file or behind a broken link, and its nearest existing
      folder is writable;
    * it is not the data folder, nor inside it, unless under a hidden folder (``DATA/.cnnlab/...``):
      a data scan would read its files as images and its folders as classes;
    * it does not hold an earlier run of the same job (any of ``run_files``) unless ``replace`` (or
      ``resume``) says what to do with it;
    * one writer at a time (:class:`FolderLock`).

    Messages name the folder and the parameter (``out``); the CLI shows them as they are.
    """

    path: Path
    #: The job writing here (``bench``, ``train``, ``review``): named in messages and in the lock.
    job: str
    #: Names (files or folders) whose presence means the folder holds an earlier run of this job.
    run_files: tuple[str, ...] = ()
    #: The data the job reads; the folder must not lie inside it (except under a hidden folder).
    data: Path | None = None
    #: More paths of an earlier run, found from its own files (bench: the plots its results.json lists).
    listed_files: Callable[[Path], list[Path]] | None = field(default=None, compare=False)
    #: Whether the job can continue an earlier run (train's ``resume``): said in the refusal.
    resumable: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.data is not None:
            object.__setattr__(self, "data", Path(self.data))

    # -- checks (create nothing) ------------------------------------------------------------------
    def check(self, *, replace: bool = False, resume: bool = False) -> Path:
        """Apply every rule; raise :class:`UsageError` (or :class:`OutputError` for permissions) before any work."""
        self.check_path()
        self.check_outside_data()
        if not (replace or resume):
            self.check_no_previous_run()
        return self.path

    def check_path(self) -> None:
        """The path can become a writable folder: not a file, not under a file or a broken link."""
        folder = self.path
        probe = folder
        while not probe.exists():
            if probe.is_symlink():
                raise UsageError(f"output folder {folder}: {probe} is a broken link")
            if probe.parent == probe:
                return
            probe = probe.parent
        if not probe.is_dir():
            where = "is" if probe == folder else f"is under {probe}, which is"
            what = "a file, not a folder" if probe.is_file() else "not a folder (a FIFO, a device or a socket)"
            raise UsageError(f"output folder {folder} {where} {what}")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise OutputError(f"output folder {folder}: no permission to write in {probe}")

    def check_outside_data(self) -> None:
        """Not the data folder, nor a visible folder inside it (hidden folders are never read as data). A manifest
        (``split.csv``, ``manifest.jsonl``) that lies in a class-folder tree counts as that tree: ``split``,
        ``review`` and a folder scan would read what is written beside it; next to other folders it is free.

        Data stored as records is read as it is stored: a Parquet file or a tar shard alone, and a ``save_to_disk``
        folder, read their own files only, so they leave the output folder free; a folder of shards or Parquet
        files holds them and its split folders only (any other folder in it would make it a class-folder tree)."""
        if self.data is None or _reads_only_its_own_files(self.data):
            return
        root = self.data if self.data.is_dir() else None
        if self.data.is_file() and _class_folder_tree(self.data.parent):
            root = self.data.parent
        if root is None:
            return
        parts = _inside(self.path, root)
        if parts is None or (parts and parts[0].startswith((".", "_"))):
            return
        where = "is the data folder" if not parts else f"is inside the data folder {root}"
        why = ("the next run would take its folders for classes and the folder for a class-folder tree, not shards or "
               "Parquet files" if _holds_records(root) else
               "the next run would read its files as images and its folders as classes")
        raise UsageError(f"output folder {self.path} {where}: {why}; choose a folder outside it (or a hidden one, "
                         f"{root / '.cnnlab' / self.job})")

    def check_no_previous_run(self) -> None:
        """Refuse a folder that holds an earlier run of this job (its files would mix with the new ones)."""
        old = self.previous()
        if old:
            names = ", ".join(p.name for p in old[:3]) + (", ..." if len(old) > 3 else "")
            ways = "continue it (resume), replace it (overwrite)" if self.resumable else "replace them (overwrite)"
            raise UsageError(f"{self.path} already holds the outputs of an earlier {self.job} run ({names}); "
                             f"{ways}, or choose another output folder")

    def previous(self) -> list[Path]:
        """The outputs of an earlier run here: ``run_files`` that exist, then what ``listed_files`` finds."""
        if not self.path.is_dir():
            return []
        found = [self.path / name for name in self.run_files if os.path.lexists(self.path / name)]
        if self.listed_files is not None:
            found += [p for p in self.listed_files(self.path) if p not in found]
        return found

    # -- actions ----------------------------------------------------------------------------------
    def create(self) -> Path:
        """Make the folder and prove a file can be written in it (:class:`OutputError` if not)."""
        return check_output_folder(self.path)

    def lock(self, *, error: type[CnnlabError] = OutputError) -> FolderLock:
        """An exclusive lock on the folder for the run (another run writing here is refused)."""
        return FolderLock(self.path, holder=f"another cnnlab {self.job} run", error=error)

    def clear_previous(self) -> None:
        """Delete what :meth:`previous` finds, and nothing else; a sub-folder left empty by that goes too."""
        emptied = set()
        for path in self.previous():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
                if path.parent != self.path:
                    emptied.add(path.parent)
        for folder in emptied:
            with contextlib.suppress(OSError):  # not empty: it holds something else, which stays
                folder.rmdir()
