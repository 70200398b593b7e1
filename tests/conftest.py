"""Shared fixtures: tiny images made on the fly, real photos from installed packages, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cnnlab.runtime.threads import passive_openmp
from tests.helpers.images import make_image

# What the CLI does for its own process (cnnlab.runtime.threads): OpenMP threads that sleep rather than spin while
# they wait, set before torch is imported here and inherited by every subprocess a test starts. Two test
# processes share the cores (scripts/test.sh): spinning threads of one would take the time the other needs.
passive_openmp()


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









@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    """One PyTorch CPU thread in the test process at the start of every test.

    Two test processes share the two cores: each keeps to one, rather than two threads each competing for both.
    Loading a model with ``threads=`` changes it for the rest of the process, so it is set before every test
    (a test sees the same count whichever tests ran before it in its process). Subprocesses are not affected.
    """
    import torch

    torch.set_num_threads(1)


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


@pytest.fixture
def isolated_torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the hub cache at an empty folder and forget any mirror or weights dir from the environment."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.delenv("CNNLAB_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("CNNLAB_WEIGHTS_MIRROR", raising=False)
    return home
