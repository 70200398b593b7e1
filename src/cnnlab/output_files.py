"""Writing output files and folders safely: atomic writes, a folder check before work, an advisory lock.

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
import tempfile
import weakref
from collections.abc import Iterator
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


def check_output_path(path: str | Path, *, what: str = "--out") -> Path:
    """Raise :class:`UsageError` if ``path`` cannot become a folder because it, or a folder above it, is a
    file (``--out results.csv``, ``--out results.csv/run1``). Creates nothing."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{what} {folder} exists and is not a folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{what} {folder}: {parent} is a file, not a folder")
            break
    return folder


def check_output_folder(path: str | Path, *, what: str = "--out") -> Path:
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
