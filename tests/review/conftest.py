"""Fixtures of the review tests: a set of real photos with planted problems."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tests.helpers.images import grid_tiles, jpeg, package_photo, save


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {
        "cat": package_photo("skimage", "data", "chelsea.png"),
        "coffee": package_photo("skimage", "data", "coffee.png"),
        "rocket": package_photo("skimage", "data", "rocket.jpg"),
    }


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, photos: dict[str, Image.Image]) -> Path:
    """8 tiles per class; one rocket tile in cat/, a crop of a coffee tile, a truncated and a tiny file."""
    root = tmp_path_factory.mktemp("planted")
    for label, img in photos.items():
        for i, tile in enumerate(grid_tiles(img, 8)):
            folder = "cat" if (label, i) == ("rocket", 7) else label
            save(tile, root / folder / f"{label}{i}.jpg")
    original = Image.open(root / "coffee" / "coffee3.jpg").convert("RGB")
    save(original.crop((10, 6, 100, 98)).resize((120, 122)), root / "coffee" / "crop.jpg")
    (root / "cat" / "broken.jpg").write_bytes(jpeg(photos["cat"])[:3000])
    save(photos["coffee"].resize((40, 30)), root / "coffee" / "tiny.jpg")
    return root
