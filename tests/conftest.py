"""Shared fixtures: tiny images made on the fly, real photos from installed packages, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _site_file(package: str, *parts: str) -> Path:
    module = __import__(package)
    return Path(module.__file__).parent.joinpath(*parts)


@pytest.fixture(scope="session")
def real_photos() -> dict[str, Path]:
    """Real photographs that ship inside installed packages, keyed by what they show."""
    photos = {
        "grace_hopper": _site_file("matplotlib", "mpl-data", "sample_data", "grace_hopper.jpg"),
        "cat": _site_file("skimage", "data", "chelsea.png"),
        "coffee": _site_file("skimage", "data", "coffee.png"),
    }
    for path in photos.values():
        assert path.is_file(), path
    return photos


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


@pytest.fixture
def image_factory(tmp_path: Path):
    return functools.partial(make_image)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A threaded HTTP server on 127.0.0.1 serving a temporary folder: yields (base_url, folder)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()
