"""Backends: ONNX Runtime and OpenVINO against PyTorch on real photos, the export cache, int8 calibration,
.onnx files as models, execution providers, and clear errors for missing extras and wrong options."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import UsageError, WeightsIntegrityError
from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeChoice, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.artifacts import exports_dir
from cnnlab.runtime.inference import run_inference
from cnnlab.runtime.sessions import onnxruntime_providers

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")
from tests.helpers.runs import load_on, prepare_on

runner = CliRunner()
OFFLINE = "efficientnet_lite0"
SMALL = "squeezenet1_1"  # 1.2 M parameters: quick to export and quantise




@pytest.fixture(autouse=True)
def cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """One export cache for the module's tests (exports are reused, as on a user's machine)."""
    root = tmp_path_factory.getbasetemp() / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def photos(real_photos: dict[str, Path]) -> list[Path]:
    return list(real_photos.values())


@pytest.fixture(scope="module")
def torch_logits(photos: list[Path]) -> torch.Tensor:
    model = load_torch(OFFLINE, RuntimeOptions(device="cpu"))
    with torch.inference_mode():
        return model(torch.stack([model.preprocessing.load(p) for p in photos]))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_fp32_backends_reproduce_pytorch_on_real_photos(backend: str, photos: list[Path],
                                                        torch_logits: torch.Tensor) -> None:
    model = load_on(OFFLINE, backend, device="cpu", threads=1)
    assert model.name == "efficientnet_lite0.IMAGENET1K" and not model.random_weights
    info = model.runtime_info()
    assert (info["backend"], info["precision"], info["threads"], info["device"]) == (backend, "fp32", 1, "cpu")
    logits = torch.cat([b.logits for b in run_inference(model, photos, batch_size=2, workers=0)])
    assert logits.shape == torch_logits.shape
    assert float((logits - torch_logits).abs().max()) < 1e-3
    assert torch.equal(logits.argmax(1), torch_logits.argmax(1))
    with pytest.raises(UsageError, match="PyTorch model's head"):
        next(run_inference(model, photos, features=True))


def test_exports_are_cached_per_model_and_weights(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = prepare_on(SMALL, "onnxruntime", random_weights=True)
    assert first.is_relative_to(exports_dir()) and first.name == "model.onnx"
    meta = json.loads(first.with_name("model.onnx.json").read_text())
    assert meta["random_weights"] is True and meta["source"] == "torchvision" and meta["spec"]["num_params"] > 0

    import cnnlab.models.export

    def no_export(*args: object, **kwargs: object) -> None:
        raise AssertionError("exported again")

    monkeypatch.setattr(cnnlab.models.export, "export_model", no_export)
    assert prepare_on(SMALL, "openvino", random_weights=True) == first  # reused by every backend
    monkeypatch.undo()
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "other"))
    weights = tmp_path / "mine.pth"
    torch.save(load_torch(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu")).module.state_dict(), weights)
    second = prepare_on(SMALL, "onnxruntime", weights=weights)
    assert second != first and json.loads(second.with_name("model.onnx.json").read_text())["weights_file"] == str(weights)


def test_int8_is_calibrated_on_the_given_images_and_cached(photos: list[Path], torch_logits: torch.Tensor) -> None:
    with pytest.raises(UsageError, match="calibrates on your images"):
        load_on(OFFLINE, "onnxruntime-int8", device="cpu")
    ort8 = load_on(OFFLINE, RuntimeChoice.ONNXRUNTIME_INT8, device="cpu", calibration=photos)
    info = ort8.runtime_info()
    assert (info["precision"], info["calibration_images"]) == ("int8", len(photos))
    ov8 = load_on(OFFLINE, "openvino-int8", device="cpu", calibration=photos)
    assert ov8.runtime_info()["file"] == info["file"]  # one int8 file, run by both runtimes
    meta = json.loads(Path(str(info["file"]) + ".json").read_text())
    assert "per-channel int8 weights" in meta["quantization"]["method"]
    assert Path(info["file"]).stat().st_size < 0.4 * (ort8.spec.num_params * 4)  # int8 weights: about a quarter
    top2 = torch.softmax(torch_logits, 1).topk(2, 1).values
    confident = top2[:, 0] - top2[:, 1] > 0.02  # the cat and the espresso; Grace Hopper is mortarboard 0.251 vs gown 0.248
    assert int(confident.sum()) == 2
    for model in (ort8, ov8):
        logits = torch.cat([b.logits for b in run_inference(model, photos, batch_size=3, workers=0)])
        # int8 kernels differ between CPUs (with or without VNNI), and the cat's top classes are three cat
        # breeds: each confident image's top class is among the other model's top 3, both ways
        for got, want in zip(logits[confident], torch_logits[confident]):
            assert int(got.argmax()) in want.topk(3).indices.tolist()
            assert int(want.argmax()) in got.topk(3).indices.tolist()


def test_onnx_files_work_where_model_names_do(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    out = tmp_path / "lite.onnx"
    assert runner.invoke(app, ["export", OFFLINE, "--out", str(out)]).exit_code == 0
    for extra in ([], ["--backend", "openvino"]):
        result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "--model", str(out), "--json", "-q", *extra])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["model"] == str(out) and payload["predictions"][0]["top"][0]["label"] == "espresso"
        assert payload["runtime"]["backend"] == (extra[-1] if extra else "onnxruntime")
    out.with_name("lite.onnx.json").unlink()
    with pytest.raises(WeightsIntegrityError, match="no metadata file lite.onnx.json"):
        load_on(str(out))
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "--model", str(out), "-q"])
    assert result.exit_code == 3 and "cnnlab export" in result.stderr


def test_missing_extras_are_named(monkeypatch: pytest.MonkeyPatch, real_photos: dict[str, Path]) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino now raises ImportError
    with pytest.raises(UsageError, match=r"pip install 'cnnlab\[openvino\]'"):
        load_on(SMALL, "openvino", random_weights=True)
    result = runner.invoke(app, ["predict", str(real_photos["cat"]), "--backend", "openvino", "-q"])
    assert result.exit_code == 2 and "cnnlab[openvino]" in result.stderr


def test_wrong_backend_options_are_usage_errors(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    with pytest.raises(UsageError, match="applies to the torch backend"):
        load_on(SMALL, "onnxruntime", precision="bf16", random_weights=True)
    with pytest.raises(UsageError, match="runs on the CPU"):
        load_on(SMALL, "openvino", device="cuda", random_weights=True)
    with pytest.raises(UsageError, match="unknown backend 'torch-int8'"):
        RuntimeChoice.of("torch", "int8")
    (tmp_path / "data" / "cat").mkdir(parents=True)
    for argv in (["bench", str(tmp_path / "data"), "--backend", "torch,tflite"],
                 ["predict", str(real_photos["cat"]), "--backend", "tensorrt"]):
        result = runner.invoke(app, [*argv, "--out", str(tmp_path / "out")] if argv[0] == "bench" else argv)
        assert result.exit_code == 2 and "Invalid value" in result.output, result.output
    assert not (tmp_path / "out").exists()


def test_execution_providers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gpu = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert onnxruntime_providers(gpu, "cpu", tmp_path) == ["CPUExecutionProvider"]
    providers = onnxruntime_providers(gpu, "cuda:1", tmp_path)
    assert [p[0] if isinstance(p, tuple) else p for p in providers] == gpu
    assert providers[0][1]["device_id"] == 1 and providers[0][1]["trt_engine_cache_path"] == str(tmp_path)
    assert onnxruntime_providers(gpu[1:], "cuda", tmp_path)[0] == ("CUDAExecutionProvider", {"device_id": 0})
    with pytest.raises(UsageError, match="onnxruntime-gpu"):
        onnxruntime_providers(["CPUExecutionProvider"], "cuda", tmp_path)
    import cnnlab.runtime.cores as cores

    # auto: no GPU driver's device file, no GPU (known without torch); else torch decides
    monkeypatch.setattr(cores, "no_gpu_here", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert onnxruntime_providers(gpu, "auto", tmp_path) == ["CPUExecutionProvider"]
    monkeypatch.setattr(cores, "no_gpu_here", lambda: False)
    assert onnxruntime_providers(gpu, "auto", tmp_path)[0][0] == "TensorrtExecutionProvider"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert onnxruntime_providers(gpu, "auto", tmp_path) == ["CPUExecutionProvider"]
