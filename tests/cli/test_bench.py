"""A device the machine does not have is refused before any model runs (exit 2, no output folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cpu,cuda"])
def test_a_missing_cuda_device_is_refused_before_any_model(tmp_path: Path, device: str) -> None:
    (tmp_path / "data" / "cat").mkdir(parents=True)
    Image.new("RGB", (32, 32), (10, 200, 10)).save(tmp_path / "data" / "cat" / "a.jpg")
    out = tmp_path / "out"
    result = runner.invoke(app, ["bench", str(tmp_path / "data"), "-m", "mobilenet_v3_small,mnasnet0_5",
                                 "--random-weights", "--device", device, "-o", str(out), "-q"])
    assert result.exit_code == 2, result.output
    assert "no CUDA device" in result.output
    assert not out.exists()
