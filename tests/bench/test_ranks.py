"""bench on two gloo processes (--nproc 2, i.e. torchrun) and on a list of devices: the same report as one process.

One thread per process and batch 1 make the arithmetic of every image the same whichever process
evaluates it, so the prediction files must be byte for byte identical (with larger batches and more
threads, probabilities can differ in the last printed digit: BLAS blocking).
"""

from __future__ import annotations

import csv
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.imagedata.demo import build_demo_set

ARGS = ["-q", "--no-plots", "--repeats", "3", "-b", "1", "--threads", "1", "--workers", "0"]


def _bench(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cnnlab", "bench", str(data), "--out", str(out), *ARGS, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _rows(out: Path) -> dict[str, dict[str, str]]:
    return {r["model"]: r for r in csv.DictReader((out / "results.csv").open())}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = build_demo_set(tmp_path_factory.mktemp("demo") / "demo")
    (data / "coffee" / "bad.png").write_bytes(b"")  # skipped by whichever rank gets it, counted once
    return data


#: The models of the one-process run: the offline model (real weights) and a second one, random weights unless
#: its file is on disk, so that a run on a list of devices has two models to share out.
MODELS = ["--models", "efficientnet_lite0,squeezenet1_1", "--random-weights-if-missing"]


@pytest.fixture(scope="module")
def one(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process, one-device run that the others must give again: the models one after the other."""
    out = tmp_path_factory.mktemp("one") / "out"
    _bench(demo, out, *MODELS)
    return out


@pytest.mark.slow
def test_two_processes_give_the_one_process_report(demo: Path, one: Path, tmp_path: Path) -> None:
    two = tmp_path / "two"
    _bench(demo, two, "--models", "efficientnet_lite0", "--nproc", "2")
    name = "efficientnet_lite0.IMAGENET1K.csv"
    assert (one / "predictions" / name).read_bytes() == (two / "predictions" / name).read_bytes()
    assert (one / "skipped.csv").read_text() == (two / "skipped.csv").read_text()
    a, b = _rows(one)["efficientnet_lite0.IMAGENET1K"], _rows(two)["efficientnet_lite0.IMAGENET1K"]
    for key in ("eval_images", "skipped_images", "scored_images", "top1", "top5", "top1_ci_low", "ece"):
        assert a[key] == b[key], key
    assert a["eval_images"] == "9" and a["skipped_images"] == "1"
    assert a["processes"] == "1" and b["processes"] == "2"
    per_rank = b["rank_eval_images_per_s"].split(";")
    assert len(per_rank) == 2 and all(float(v) > 0 for v in per_rank)
    assert float(b["process_peak_rss_mib_total"]) > float(b["process_peak_rss_mib"]) > 0
    assert float(b["throughput_images_per_s_total"]) > float(b["throughput_images_per_s"]) > 0
    run = json.loads((two / "results.json").read_text())["models"][0]["run"]
    assert [r["rank"] for r in run["ranks"]] == [0, 1]
    assert sum(r["eval_images"] for r in run["ranks"]) == 9  # each image once, no padded repeats
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())  # rank 0 alone wrote


@pytest.mark.slow
def test_models_on_a_list_of_devices_match_a_sequential_run(demo: Path, one: Path, tmp_path: Path) -> None:
    seq, par = one, tmp_path / "par"
    _bench(demo, par, *MODELS, "--device", "cpu,cpu")
    name = "efficientnet_lite0.IMAGENET1K.csv"
    assert (seq / "predictions" / name).read_bytes() == (par / "predictions" / name).read_bytes()
    a, b = _rows(seq), _rows(par)
    assert list(a) == list(b)  # rows in the order asked for
    for model in a:
        for key in ("status", "eval_images", "skipped_images", "top1", "random_weights"):
            assert a[model][key] == b[model][key], (model, key)
    assert json.loads((par / "results.json").read_text())["config"]["devices"] == ["cpu", "cpu"]


@pytest.mark.slow
def test_two_nodes_on_one_machine(demo: Path, one: Path, tmp_path: Path) -> None:
    """Two torchrun launches, --nnodes 2 --node-rank 0/1, one process each, meeting at 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nodes"
    nodes = []
    for rank in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
               "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
               "-m", "cnnlab", "bench", str(demo), "--out", str(out), "--models", "efficientnet_lite0", *ARGS]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], outputs[0][1][-3000:] + outputs[1][1][-3000:]
    name = "efficientnet_lite0.IMAGENET1K.csv"
    assert (one / "predictions" / name).read_bytes() == (out / "predictions" / name).read_bytes()
    assert _rows(out)["efficientnet_lite0.IMAGENET1K"]["processes"] == "2"
