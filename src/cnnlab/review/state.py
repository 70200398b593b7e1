"""cnnlab's own folders inside a dataset folder (``.cnnlab/``, ``.quarantine/``), refused when they lead elsewhere.

A downloaded or shared dataset can hold anything: ``DATA/.quarantine`` linking to another folder would
make ``--apply`` move images there, ``DATA/.cnnlab`` linking elsewhere would make review write its cache
and reports there. cnnlab never follows a link (or a file) where it keeps its own state; it says so
and stops instead.
"""

from __future__ import annotations

from pathlib import Path

from cnnlab.errors import DatasetError


def own_folder(root: Path, *parts: str) -> Path:
    """``root/parts...``: refused if any part exists as a symbolic link or as something other than a folder.

    Creates nothing. Raises :class:`DatasetError` naming the part and what to do.
    """
    path = Path(root)
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise DatasetError(f"{path} is a symbolic link: cnnlab keeps its own files inside {root} and does not "
                               "follow links there; remove the link (or move what it points to into its place)")
        if path.exists() and not path.is_dir():
            raise DatasetError(f"{path} is a file, not a folder: cnnlab keeps its own files there; "
                               "move the file away (or rename it) and run again")
    return path


def own_file(folder: Path, name: str) -> Path:
    """``folder/name``, a regular file of cnnlab's or absent: refused if it is a link or anything but a file."""
    path = folder / name
    if path.is_symlink():
        raise DatasetError(f"{path} is a symbolic link: cnnlab does not follow links where it keeps its records; "
                           "remove the link")
    if path.exists() and not path.is_file():
        raise DatasetError(f"{path} is not a regular file: cnnlab keeps its records there; move it away")
    return path
