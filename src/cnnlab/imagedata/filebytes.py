"""Reading a file's bytes safely: a regular file only (never a FIFO, socket or device), within a byte limit.

Below the decoder and the dataset records, which both read files through it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import NoReturn

from cnnlab.errors import ImageDecodeError


def read_file_bytes(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``max_bytes`` bytes.

    The file is opened without blocking (a FIFO with no writer would otherwise wait for ever) and
    checked on the open descriptor, so a link swapped in between cannot fool the check; the read
    stops after ``max_bytes + 1`` bytes whatever size the file reports.

    Raises:
        ImageDecodeError: ``missing``, ``not-a-file``, ``too-large``, ``symlink-loop`` or ``unreadable``.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # reported by the open below
    if mode is not None and not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        _refuse_special(path, mode)  # devices are not even opened: opening some has side effects
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        if path.is_symlink():
            raise ImageDecodeError("missing", f"a symbolic link that leads nowhere: {path}") from None
        raise ImageDecodeError("missing", f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageDecodeError("not-a-file", f"is a directory: {path}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageDecodeError("symlink-loop", f"a symbolic link that leads back to itself: {path}") from None
        raise ImageDecodeError("unreadable", f"{exc.strerror or exc}: {path}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageDecodeError("not-a-file", f"is a directory: {path}")
        if not stat.S_ISREG(info.st_mode):
            _refuse_special(path, info.st_mode)
        if info.st_size > max_bytes:
            raise ImageDecodeError("too-large", f"{info.st_size:,} bytes exceeds the limit of {max_bytes:,}")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise ImageDecodeError("too-large", f"more than {max_bytes:,} bytes (the file grew while read)")
        return b"".join(chunks)
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{exc.strerror or exc}: {path}") from None
    finally:
        os.close(fd)


def _refuse_special(path: Path, mode: int) -> NoReturn:
    kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "a device"
    raise ImageDecodeError("not-a-file", f"{path} is {kind}, not a regular file")
