"""A timm model through train, predict, export and bench: with random weights, and with a local weights file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.models.load import load_torch
from cnnlab.models.registry import get_spec
from cnnlab.options import RuntimeOptions
from cnnlab.train import TrainConfig, fine_tune
from tests.helpers.images import make_shades

pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
runner = CliRunner()
MODEL = "timm/test_efficientnet.r160_in1k"  # timm's own 0.36 M-parameter test model, 160 px
FAST_BENCH = ["-q", "--workers", "0", "--threads", "1", "--repeats", "3", "-b", "4", "--no-plots", "--in-process"]


@pytest.fixture(autouse=True)
def isolated(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # nothing may be downloaded
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.getbasetemp() / "hf-empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path_factory.getbasetemp() / "torch-empty"))
    monkeypatch.delenv("CNNLAB_WEIGHTS_DIR", raising=False)


@pytest.fixture(scope="module")
def shades(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_shades(tmp_path_factory.mktemp("shades"))


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local weights file for the model: its random state dict, saved as safetensors (as on the hub)."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(1)
    state = {k: v.contiguous() for k, v in get_spec(MODEL).build().state_dict().items()}
    path = folder / "test_efficientnet.r160_in1k.safetensors"  # the name the weights folders are searched for
    safetensors_torch.save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def checkpoint(shades: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = fine_tune(TrainConfig(data=str(shades), out=str(tmp_path_factory.mktemp("run") / "r"), model=MODEL,
                                   random_weights=True, image_size=32, freeze_epochs=1, epochs=1, batch_size=8,
                                   workers=0))
    assert result.arch == MODEL and result.head.startswith("classifier: linear")
    return result.best_path


@pytest.fixture(scope="module")
def from_file(shades: Path, weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A linear probe on the local weights file: the backbone stays the file's."""
    result = fine_tune(TrainConfig(data=str(shades), out=str(tmp_path_factory.mktemp("run") / "r"), model=MODEL,
                                   weights=str(weights_file), freeze=True, epochs=1, image_size=32, batch_size=8,
                                   workers=0))
    return result.best_path


def test_train_with_random_weights_then_predict(checkpoint: Path, shades: Path) -> None:
    loaded = load_torch(str(checkpoint), RuntimeOptions(device="cpu"))
    assert loaded.categories == ("dark", "light") and loaded.preprocessing.crop_size == 32
    predicted = runner.invoke(app, ["predict", str(shades), "--model", str(checkpoint), "--json", "-q"])
    assert predicted.exit_code == 0, predicted.output
    assert len(json.loads(predicted.stdout)["predictions"]) == 12


@pytest.fixture(scope="module")
def best_onnx(checkpoint: Path) -> Path:
    exported = runner.invoke(app, ["export", str(checkpoint), "--json"])
    assert exported.exit_code == 0, exported.output
    return Path(json.loads(exported.stdout)["path"])


def test_exported_checkpoint_predicts_as_pytorch_does(checkpoint: Path, best_onnx: Path, shades: Path) -> None:
    on_ort = runner.invoke(app, ["predict", str(shades), "--model", str(best_onnx), "--json", "-q"])
    on_torch = runner.invoke(app, ["predict", str(shades), "--model", str(checkpoint), "--json", "-q"])
    labels = [[p["top"][0]["label"] for p in json.loads(r.stdout)["predictions"]] for r in (on_ort, on_torch)]
    assert labels[0] == labels[1]


def test_bench_of_the_checkpoint_and_its_onnx_file(checkpoint: Path, best_onnx: Path, shades: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "bench"
    benched = runner.invoke(app, ["bench", str(shades), "--models", f"{checkpoint},{best_onnx}", "--out", str(out),
                                  *FAST_BENCH])
    assert benched.exit_code == 0, benched.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [r["backend"] for r in rows] == ["torch", "onnxruntime"]  # torch (the default) runs an .onnx file in onnxruntime
    assert rows[0]["top1"] == rows[1]["top1"] != ""  # scored on the user's classes


def test_train_from_a_local_weights_file(from_file: Path, weights_file: Path) -> None:
    state = safetensors_torch.load_file(str(weights_file))
    trained = torch.load(from_file, weights_only=True)["state_dict"]
    assert torch.equal(trained["conv_stem.weight"], state["conv_stem.weight"])


def test_predict_and_export_with_a_local_weights_file(shades: Path, weights_file: Path, tmp_path: Path) -> None:
    predicted = runner.invoke(app, ["predict", str(shades / "dark"), "--model", MODEL, "--weights", str(weights_file),
                                    "--backend", "openvino", "--json", "-q"])
    assert predicted.exit_code == 0, predicted.output
    assert json.loads(predicted.stdout)["random_weights"] is False
    offline = runner.invoke(app, ["export", MODEL, "--out", str(tmp_path / "m.onnx")])
    assert offline.exit_code == 3 and "HF_HUB_OFFLINE" in offline.stderr  # no weights given, none on disk, offline
    exported = runner.invoke(app, ["export", MODEL, "--weights", str(weights_file), "--out", str(tmp_path / "m.onnx"),
                                   "--json"])
    assert exported.exit_code == 0 and json.loads(exported.stdout)["ok"], exported.output
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["weights_file"] == str(weights_file) and meta["source"] == "timm" and meta["spec"]["license"]


def test_bench_with_a_weights_folder(shades: Path, weights_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    mapping = tmp_path / "mapping.yaml"
    mapping.write_text("dark: [tabby]\nlight: [espresso]\n")  # ImageNet outputs that count as each folder
    benched = runner.invoke(app, ["bench", str(shades), "--models", MODEL, "--weights-dir", str(weights_file.parent),
                                  "--mapping", str(mapping), "--backend", "torch,onnxruntime-int8", "--out", str(out),
                                  *FAST_BENCH])
    assert benched.exit_code == 0, benched.output
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["model"], r["random_weights"]) for r in rows] == [
        ("timm/test_efficientnet.r160_in1k", "False"), ("timm/test_efficientnet.r160_in1k@onnxruntime-int8", "False")]
    assert rows[1]["precision"] == "int8" and rows[1]["calibration_images"] == "12"
    assert rows[0]["top1"] != "" and rows[1]["top1"] != ""  # "pretrained" (a local file): scored, through the mapping


def test_random_weights_bench(shades: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    benched = runner.invoke(app, ["bench", str(shades), "--models", MODEL, "--random-weights",
                                  "--backend", "openvino", "--out", str(out), *FAST_BENCH])
    assert benched.exit_code == 0, benched.output
    row = next(csv.DictReader((out / "results.csv").open()))
    assert row["model"] == f"{MODEL}@openvino" and row["random_weights"] == "True"
    assert row["provider"].startswith("openvino CPU") and float(row["throughput_images_per_s"]) > 0
