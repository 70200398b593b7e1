"""Images and image sets made on the fly (seeded, so every run sees the same pixels)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

#: Colour classes of :func:`make_colours`.
COLOURS = {"blue": (40, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def make_image(path: Path, size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30),
               mode: str = "RGB", **save_kwargs: object) -> Path:
    """Write a small image with a gradient so that it is not trivially compressible."""
    w, h = size
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    base = np.array(color, dtype=np.float32)[None, None, :]
    array = np.clip(base * 0.7 + x * 0.3 + np.zeros((h, 1, 1)), 0, 255).astype(np.uint8)
    img = Image.fromarray(array, "RGB")
    if mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **save_kwargs)
    return path


def make_shades(root: Path) -> Path:
    """Two classes, ``dark`` and ``light``, of six noisy 24x24 grey images each (seeded): a set any model
    learns in one short run."""
    rng = np.random.default_rng(0)
    for name, rgb in {"dark": (40, 40, 40), "light": (220, 220, 220)}.items():
        (root / name).mkdir(parents=True)
        for i in range(6):
            noise = rng.normal(0, 20, (24, 24, 3))
            Image.fromarray(np.clip(np.array(rgb) + noise, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def block_import(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``import package`` fail with ImportError (an extra that is not installed)."""
    import builtins

    real_import = builtins.__import__

    def blocked(name: str, *args: object, **kwargs: object) -> object:
        if name == package:
            raise ImportError(f"no {package}")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", blocked)


def make_colours(root: Path, per_class: int = 12, size: int = 40, seed: int = 0,
                 classes: Sequence[str] = ("blue", "green", "red"), broken: bool = True) -> Path:
    """Noisy flat-colour images, ``per_class`` in each of ``classes`` (names from :data:`COLOURS`): a set any
    model learns in one short run. ``broken``: also an empty ``red/broken.jpg`` that must be skipped and counted."""
    rng = np.random.default_rng(seed)
    for name in classes:
        rgb = COLOURS[name]
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 30, (size, size, 3))
            array = np.clip(np.array(rgb)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(array).save(root / name / f"{i:02d}.png")
    if broken and "red" in classes:
        (root / "red" / "broken.jpg").write_bytes(b"")
    return root


def make_two_colours(root: Path, per_class: int = 8) -> Path:
    """:func:`make_colours` at its smallest: blue and red, 32 px, no broken file (the CLI tests' set)."""
    return make_colours(root, per_class=per_class, size=32, classes=("blue", "red"), broken=False)


def package_photo(package: str, *parts: str) -> Image.Image:
    module = __import__(package)
    with Image.open(Path(module.__file__).parent.joinpath(*parts)) as img:
        return img.convert("RGB")


def grid_tiles(img: Image.Image, count: int, side: int = 112) -> list[Image.Image]:
    """The ``count`` non-overlapping ``side``-pixel tiles of ``img`` with the most detail (no two of plain sky)."""
    boxes = [(x, y, x + side, y + side) for y in range(0, img.height - side + 1, side)
             for x in range(0, img.width - side + 1, side)]
    assert len(boxes) >= count, (img.size, count)
    detail = [float(np.asarray(img.crop(b).convert("L"), dtype=np.float32).std()) for b in boxes]
    chosen = sorted(sorted(range(len(boxes)), key=lambda i: -detail[i])[:count])
    return [img.crop(boxes[i]) for i in chosen]


def jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def save(img: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg(img))
    return path


def real_photos_with_crops(root: Path) -> dict[str, str]:
    """Two classes of distinct real photos, plus crops of three of them filed beside them: {crop: its source}."""
    import numpy as np
    from PIL import Image
    from skimage import data as sk
    from sklearn.datasets import load_sample_image

    photos = {
        "outdoors": {"rocket": sk.rocket(), "china": load_sample_image("china.jpg"), "flower": load_sample_image("flower.jpg"),
                     "hubble": sk.hubble_deep_field(), "motorcycle": sk.stereo_motorcycle()[0]},
        "indoors": {"astronaut": sk.astronaut(), "coffee": sk.coffee(), "chelsea": sk.chelsea(), "retina": sk.retina(),
                    "camera": np.stack([sk.camera()] * 3, axis=-1)},
    }
    for label, named in photos.items():
        for name, pixels in named.items():
            save(Image.fromarray(pixels).convert("RGB"), root / label / f"{name}.jpg")
    crops = {}
    for label, name, keep, size in (("outdoors", "china", 0.9, None), ("indoors", "astronaut", 0.85, (300, 300)),
                                    ("indoors", "coffee", 0.8, None)):
        with Image.open(root / label / f"{name}.jpg") as img:
            w, h = img.size
            dx, dy = round(w * (1 - keep) / 2), round(h * (1 - keep) / 3)
            crop = img.crop((dx, dy, dx + round(w * keep), dy + round(h * keep)))
            save(crop.resize(size) if size else crop, root / label / f"{name}-crop.jpg")
        crops[f"{label}/{name}-crop.jpg"] = f"{label}/{name}.jpg"
    return crops

