"""The built-in demo set: real photographs that ship inside installed Python packages.

No download is needed: scikit-image, matplotlib and scikit-learn carry a few photos as test data.
:func:`build_demo_set` copies them into class folders and writes ``SOURCES.csv``, a manifest of
where every file came from. ``astronaut`` is deliberately a class ImageNet does not have: the
benchmark must report it as unmapped instead of scoring it as wrong.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path

from cnnlab.errors import DatasetError
from cnnlab.outputs import atomic_open


@dataclass(frozen=True)
class DemoPhoto:
    label: str
    package: str
    relative_path: str
    description: str


DEMO_PHOTOS: tuple[DemoPhoto, ...] = (
    DemoPhoto("cat", "skimage", "data/chelsea.png", "Chelsea the cat (scikit-image sample data)"),
    DemoPhoto("coffee", "skimage", "data/coffee.png", "a cup of coffee (scikit-image sample data)"),
    DemoPhoto("motorcycle", "skimage", "data/motorcycle_left.png", "a motorcycle, left stereo view"),
    DemoPhoto("motorcycle", "skimage", "data/motorcycle_right.png", "a motorcycle, right stereo view"),
    DemoPhoto("rocket", "skimage", "data/rocket.jpg", "a rocket on its launch pad"),
    DemoPhoto("astronaut", "skimage", "data/astronaut.png", "astronaut Eileen Collins (no ImageNet class)"),
    DemoPhoto("military uniform", "matplotlib", "mpl-data/sample_data/grace_hopper.jpg", "Grace Hopper in uniform"),
    DemoPhoto("flower", "sklearn", "datasets/images/flower.jpg", "a flower (scikit-learn sample image)"),
    DemoPhoto("palace", "sklearn", "datasets/images/china.jpg", "a Chinese palace (scikit-learn sample image)"),
)


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def build_demo_set(dest: str | Path) -> Path:
    """Copy the demo photos into ``dest/<class>/`` and write ``dest/SOURCES.csv``. Returns ``dest``."""
    dest = Path(dest)
    rows = []
    for photo in DEMO_PHOTOS:
        base = _package_dir(photo.package)
        source = base / photo.relative_path if base else None
        if source is None or not source.is_file():
            continue
        target = dest / photo.label / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise DatasetError(f"{target} is a link or not a regular file: the demo set is built only of its own "
                               "copies; remove it first")
        if not target.exists():
            shutil.copyfile(source, target)
        rows.append({
            "path": target.relative_to(dest).as_posix(),
            "label": photo.label,
            "package": photo.package,
            "source": f"{photo.package}/{photo.relative_path}",
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            "description": photo.description,
        })
    if not rows:
        raise DatasetError("no demo photos found: install scikit-image, matplotlib and scikit-learn")
    with atomic_open(dest / "SOURCES.csv") as fh:  # replaces a link rather than writing through it
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return dest
