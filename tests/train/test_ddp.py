"""train under DistributedDataParallel on two gloo processes: the one-process accuracy, rank 0's files, resume with 1 process."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.train import TrainConfig, fine_tune, read_history
from cnnlab.train.ddp import RankBatches
from tests.helpers.images import make_colours
from tests.helpers.runs import FAST

#: FAST as ``cnnlab train`` options (no search for crops of one photo: FAST has none either).
ARGS = ["--model", "efficientnet_lite0", "--epochs", "2", "--freeze-epochs", "1", "-b", "8", "--image-size", "64",
        "--workers", "0", "--ema", "--no-crops", "-q"]

#: Run under torchrun: rank 0 stops after its third epoch (probe, head, first full), as Ctrl-C would.
_INTERRUPTED = """
import sys
from cnnlab.runtime.distributed import from_environment
from cnnlab.train import TrainConfig, fine_tune
from cnnlab.progress import Progress
from tests.helpers.runs import FAST

class StopAfterThree(Progress):
    epochs = 0
    def finish(self, key, message=None):
        self.epochs += key == "epoch"
        if self.epochs == 3 and from_environment().is_main:
            raise SystemExit(3)

fine_tune(TrainConfig(data=sys.argv[1], out=sys.argv[2], **FAST), progress=StopAfterThree())
"""


@pytest.fixture(scope="module")
def colours(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_colours(tmp_path_factory.mktemp("colours"))


def test_batches_are_dealt_out_exactly() -> None:
    sampler = list(range(10))
    parts = [list(RankBatches(sampler, 4, False, r, 2)) for r in range(2)]  # type: ignore[arg-type]
    assert parts[0] == [[0, 2], [4, 6], [8]] and parts[1] == [[1, 3], [5, 7], [9]]
    assert len(RankBatches(sampler, 4, False, 0, 2)) == 3  # type: ignore[arg-type]
    assert list(RankBatches([0, 1, 2], 3, False, 3, 4)) == [[0]]  # type: ignore[arg-type]  # never empty


@pytest.mark.slow
def test_two_processes_train_like_one(colours: Path, tmp_path: Path) -> None:
    one = fine_tune(TrainConfig(data=str(colours), out=str(tmp_path / "one"), **FAST))
    two = tmp_path / "two"
    cmd = [sys.executable, "-m", "cnnlab", "train", str(colours), "--out", str(two), *ARGS, "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    metrics = (two / "metrics.json").read_text()
    import json

    held_out = json.loads(metrics)["val"]["top1"]
    assert one.evaluation["top1"] >= 0.9 and held_out >= 0.9
    assert held_out == pytest.approx(one.evaluation["top1"])
    h1, h2 = one.history, read_history(two / "history.csv")
    assert [(r.epoch, r.phase, r.images) for r in h1] == [(r.epoch, r.phase, r.images) for r in h2]  # all images, once
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


@pytest.mark.slow
def test_resume_a_two_process_run_with_one_process(colours: Path, tmp_path: Path) -> None:
    script = tmp_path / "interrupted.py"
    script.write_text(_INTERRUPTED, encoding="utf-8")
    out = tmp_path / "run"
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
           str(colours), str(out)]
    env = {**__import__("os").environ, "PYTHONPATH": f"{root / 'src'}:{root}"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=root)
    assert proc.returncode != 0  # rank 0 stopped, torchrun reports it
    assert len(read_history(out / "history.csv")) == 3, proc.stderr[-3000:]
    stopped = torch.load(out / "last.pt", weights_only=True)
    assert int(stopped["resume"]["ema"]["n_averaged"]) == 4 + 4  # the steps of one process: batches are global
    resumed = fine_tune(TrainConfig(data=str(colours), out=str(out), resume=True, workers=0))
    assert resumed.resumed_from_epoch == 2  # probe (0), head (1), full (2)
    assert [r.epoch for r in resumed.history] == [0, 1, 2, 3]
    assert resumed.evaluation["top1"] >= 0.9
    rows = list(csv.DictReader((out / "history.csv").open()))
    assert len(rows) == 4


def test_a_locked_run_folder_stops_every_rank_with_one_message(colours: Path, tmp_path: Path) -> None:
    """Only rank 0 takes the run folder's lock. When it could not, the other rank went on alone through the data
    and the probe, then died in DistributedDataParallel with a 60-line gloo traceback."""
    from cnnlab.outputs import FolderLock

    out = tmp_path / "busy"
    cmd = [sys.executable, "-m", "cnnlab", "train", str(colours), "--out", str(out), *ARGS, "--nproc", "2"]
    with FolderLock(out):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 2, proc.stderr[-4000:]
    assert proc.stderr.count("error:") == 1 and "another cnnlab train run is writing" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]
