"""`cnnlab weights`: where, fetch (through a local mirror) and dirs (the weights logic: tests/models/test_weights.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models.registry import get_spec
from cnnlab.models.weights import MIRROR_ENV, locate_weights

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("isolated_torch_home")


@pytest.mark.parametrize("flag", ["--out", "-o", "--dest"])  # --dest: the deprecated name, hidden
def test_fetch_uses_the_mirror_and_checks_the_hash(http_dir: tuple[str, Path], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch, flag: str) -> None:
    base, www = http_dir
    spec = get_spec("squeezenet1_1")
    assert spec.weights_file is not None
    # the real file name carries the real hash; serve another file under it and expect a refusal,
    # proving the mirror URL is used and the hash is checked against the published name
    torch.save(spec.build().state_dict(), www / spec.weights_file)
    monkeypatch.setenv(MIRROR_ENV, base)
    assert locate_weights(spec).url == f"{base}/{spec.weights_file}"
    result = runner.invoke(app, ["weights", "fetch", "squeezenet1_1", flag, str(tmp_path / "w"), "-q"])
    assert result.exit_code == 3
    assert "sha256" in result.output
    assert ("deprecated" in result.output) == (flag == "--dest")


def test_fetch_into_a_file_is_refused_once(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.write_text("x")
    result = runner.invoke(app, ["weights", "fetch", "efficientnet_lite0", "resnet18", "-o", str(dest), "-q"])
    assert result.exit_code == 2 and result.output.count("is a file") == 1, result.output


def test_where() -> None:
    result = runner.invoke(app, ["weights", "where", "resnet50"])
    assert result.exit_code == 0
    assert "resnet50-11ad3fa6.pth" in result.output
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in result.output
    assert "not on this machine" in result.output


def test_dirs_lists_the_given_folder_first(tmp_path: Path) -> None:
    result = runner.invoke(app, ["weights", "dirs", "--weights-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == str(tmp_path)
