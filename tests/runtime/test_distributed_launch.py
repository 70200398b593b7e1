"""``--nproc N``: the launcher keeps the command's exit status and its message, without torchrun's noise.

These runs fail before any model runs (a few seconds each: two processes start and stop).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from cnnlab.runtime.distributed import exit_status, torchrun_command


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for label in ("cat", "dog"):
        (root / label).mkdir()
        Image.new("RGB", (40, 40), (120, 30, 200)).save(root / label / "a.jpg")
    return root


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cnnlab", "bench", *args, "-q", "--no-plots", "--random-weights", "--nproc", "2"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_nproc_keeps_the_exit_status_of_an_out_folder_holding_a_run(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.csv").write_text("model\n")
    proc = _bench(str(photos), "-m", "mobilenet_v3_small", "-o", str(out))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("already holds the outputs of an earlier bench run") == 1
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr


def test_nproc_says_a_preflight_error_once_with_its_status(photos: Path, tmp_path: Path) -> None:
    proc = _bench(str(photos), "-m", "mobilenet_v3_small,no_such_model", "-o", str(tmp_path / "out"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.count("unknown model 'no_such_model'") == 1, proc.stderr[-3000:]
    assert "ChildFailedError" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


@dataclass
class _Failure:
    exitcode: int
    timestamp: int


def test_exit_status_is_rank_0s_or_the_first_failure() -> None:
    assert exit_status({0: _Failure(4, 2), 1: _Failure(-15, 1)}) == 4  # rank 0 decided: a model failed
    assert exit_status({0: _Failure(-15, 2), 1: _Failure(2, 1)}) == 2  # rank 0 stopped because rank 1 failed
    assert exit_status({1: _Failure(-9, 1)}) == 128 + 9
    assert torchrun_command(2, ["bench", "x"])[1:3] == ["-m", "cnnlab.runtime.distributed"]
