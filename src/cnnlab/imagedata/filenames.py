"""Which file names are images, and which are litter: the names every reader of folders goes by.

Below :mod:`cnnlab.imagedata.datasets` (which walks folders) and :mod:`cnnlab.imagedata.sources` (which tells a
folder of shards or Parquet files from a folder of images), so that both read names the same way.
"""

from __future__ import annotations

from pathlib import Path

#: File name extensions treated as images when scanning folders (case-insensitive).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)

#: Names never treated as images or walked into (compared case-insensitively): what operating systems,
#: archivers and photo managers leave in folders. Hidden names (a leading ``.``) are skipped too.
JUNK_NAMES: frozenset[str] = frozenset(
    {"__macosx", "thumbs.db", "ehthumbs.db", "desktop.ini", "@eadir", "$recycle.bin", "system volume information"}
)


def is_image_name(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def is_junk_name(name: str) -> bool:
    """Hidden (``.name``) or operating-system litter (:data:`JUNK_NAMES`): never an image, never walked."""
    return name.startswith(".") or name.lower() in JUNK_NAMES
