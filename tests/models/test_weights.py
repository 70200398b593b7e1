"""Weights: resolution order, hash-checked download from a local server, safe loading, offline errors
(the `cnnlab weights` command: tests/cli/test_weights.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import UnsafeWeightsError, WeightsIntegrityError, WeightsNotFoundError
from cnnlab.models.load import load_torch
from cnnlab.models.registry import get_spec
from cnnlab.models.weights import MIRROR_ENV, fetch_weights, load_state_dict, locate_weights, resolve_weights
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_torch_home")


def _hash_named_state_dict(folder: Path, arch: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """Save a real (random) state dict of ``arch`` under a torchvision-style hash-suffixed name."""
    state = get_spec(arch).build().state_dict()
    tmp = folder / "tmp.pth"
    torch.save(state, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()[:8]
    final = folder / f"{arch}-{digest}.pth"
    tmp.rename(final)
    return final, state


def test_download_from_local_server_with_hash_check(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    base, www = http_dir
    served, state = _hash_named_state_dict(www, "resnet18")
    spec = dataclasses.replace(get_spec("resnet18"), weights_url=f"{base}/{served.name}", weights_file=served.name)
    path = fetch_weights(spec, tmp_path / "dl", progress=False)
    assert path.read_bytes() == served.read_bytes()
    loaded = load_state_dict(path)
    assert torch.equal(loaded["fc.weight"], state["fc.weight"])
    # found on disk the second time: no download needed even if the server is gone
    assert resolve_weights(spec, weights_dir=tmp_path / "dl", download=False) == path


def test_wrong_hash_is_refused_and_nothing_saved(http_dir: tuple[str, Path], tmp_path: Path) -> None:
    base, www = http_dir
    served, _ = _hash_named_state_dict(www, "resnet18")
    lying_name = "resnet18-00000000.pth"
    (www / lying_name).write_bytes(served.read_bytes())
    spec = dataclasses.replace(get_spec("resnet18"), weights_url=f"{base}/{lying_name}", weights_file=lying_name)
    with pytest.raises(WeightsIntegrityError, match="sha256"):
        fetch_weights(spec, tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl" / lying_name).exists()


def test_offline_error_names_file_url_and_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("CNNLAB_WEIGHTS_DIR", str(tmp_path / "envdir"))
    with pytest.raises(WeightsNotFoundError) as info:
        load_torch(ModelSource(name="alexnet", weights_dir=tmp_path / "mine"), progress=False)
    message = str(info.value)
    assert "alexnet-owt-7be5be79.pth" in message
    assert "http://127.0.0.1:9/alexnet-owt-7be5be79.pth" in message
    assert str(tmp_path / "mine") in message and str(tmp_path / "envdir") in message
    assert "hub" in message and "checkpoints" in message


def test_cli_missing_weights_exits_nonzero_without_traceback(image_factory, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MIRROR_ENV, "http://127.0.0.1:9")
    img = image_factory(tmp_path / "a.jpg")
    result = runner.invoke(app, ["predict", str(img), "--model", "googlenet", "-q"])
    assert result.exit_code == 3
    assert "googlenet-1378be20.pth" in result.output
    assert "Traceback" not in result.output


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):  # runs os.system on a plain torch.load(weights_only=False)
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pth"
    with path.open("wb") as fh:
        pickle.dump({"fc.weight": Evil()}, fh)
    with pytest.raises(UnsafeWeightsError, match="refused"):
        load_state_dict(path)
    assert not (tmp_path / "pwned").exists()
    result = runner.invoke(app, ["predict", str(path), "--model", "resnet18", "--weights", str(path), "-q"])
    assert result.exit_code == 3 and "refused" in result.output


def test_explicit_weights_file_and_weights_dir(tmp_path: Path, image_factory) -> None:
    folder = tmp_path / "wd"
    folder.mkdir()
    spec = get_spec("squeezenet1_1")
    state = spec.build().state_dict()
    torch.save(state, folder / spec.weights_file)
    by_dir = load_torch(ModelSource(name="squeezenet1_1", weights_dir=folder, download=False), RuntimeOptions(device="cpu"))
    assert by_dir.weights_path == folder / spec.weights_file
    assert torch.equal(by_dir.module.state_dict()["classifier.1.weight"], state["classifier.1.weight"])
    explicit = tmp_path / "any-name.bin"
    explicit.write_bytes((folder / spec.weights_file).read_bytes())
    by_file = load_torch(ModelSource(name="squeezenet1_1", weights=explicit, download=False))
    assert by_file.weights_path == explicit
    img = image_factory(tmp_path / "p.png")
    result = runner.invoke(app, ["predict", str(img), "--model", "squeezenet1_1", "--weights-dir", str(folder), "--json", "-q"])
    assert result.exit_code == 0, result.output
    assert '"model": "squeezenet1_1.IMAGENET1K_V1"' in result.output


def test_weights_that_do_not_fit_the_model(tmp_path: Path) -> None:
    path = tmp_path / "wrong.pth"
    torch.save(get_spec("resnet18").build().state_dict(), path)
    with pytest.raises(WeightsIntegrityError, match="do not fit"):
        load_torch(ModelSource(name="alexnet", weights=path))


def test_non_torch_file_is_called_what_it_is(tmp_path: Path, image_factory) -> None:
    fake = image_factory(tmp_path / "photo.jpg")
    renamed = tmp_path / "weights.pt"
    renamed.write_bytes(fake.read_bytes())
    with pytest.raises(WeightsIntegrityError, match="not a PyTorch weights file"):
        load_state_dict(renamed)


def test_fetch_dest_copies_a_cached_file_after_checking_its_hash(tmp_path: Path, isolated_torch_home: Path) -> None:
    cache = isolated_torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    served, _ = _hash_named_state_dict(cache, "resnet18")
    spec = dataclasses.replace(get_spec("resnet18"), weights_file=served.name)
    copied = fetch_weights(spec, tmp_path / "airgap", progress=False)
    assert copied == tmp_path / "airgap" / served.name and copied.read_bytes() == served.read_bytes()
    corrupt = cache / "resnet18-deadbeef.pth"
    corrupt.write_bytes(served.read_bytes())
    with pytest.raises(WeightsIntegrityError, match="deadbeef"):
        fetch_weights(dataclasses.replace(spec, weights_file=corrupt.name), tmp_path / "airgap2", progress=False)


def test_weights_dir_comes_before_packaged_weights(tmp_path: Path) -> None:
    spec = get_spec("efficientnet_lite0")
    assert locate_weights(spec).found == spec.packaged_weights
    mine = tmp_path / spec.weights_file
    mine.write_bytes(b"placeholder")
    assert locate_weights(spec, tmp_path).found == mine


def test_checkpoint_paths_refuse_other_weights(tmp_path: Path) -> None:
    from cnnlab.errors import CnnlabError

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"\x80placeholder")
    with pytest.raises(CnnlabError, match="checkpoint with its own weights"):
        load_torch(ModelSource(name=str(ckpt), policy=WeightsPolicy.RANDOM))


HUB_DIRS = """
import json, os, sys
from cnnlab.models.weights import hub_checkpoints_dir
settings = [{}, {"TORCH_HOME": "/tmp/th"}, {"XDG_CACHE_HOME": "/tmp/xdg"}, {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"}]
ours = []
for extra in settings:
    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(key, None)
    os.environ.update(extra)
    ours.append(str(hub_checkpoints_dir()))
imported = "torch" in sys.modules
import torch
theirs = []
for extra in settings:
    for key in ("TORCH_HOME", "XDG_CACHE_HOME"):
        os.environ.pop(key, None)
    os.environ.update(extra)
    theirs.append(os.path.join(torch.hub.get_dir(), "checkpoints"))
print(json.dumps({"ours": ours, "theirs": theirs, "imported": imported}))
"""


def test_hub_cache_is_found_as_torch_finds_it_without_importing_torch() -> None:
    """Looking for a weights file imports no torch (predict's ONNX Runtime path), yet names torch's own folder."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", HUB_DIRS], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["imported"] is False
    assert out["ours"] == out["theirs"] and len(set(out["ours"])) == 4
