"""Backends against broken and hostile files: damaged export-cache entries are made again, and ``.onnx``
files whose sidecar does not match the graph (or that are not ONNX at all) are clear errors (exit 3),
never tracebacks or silently wrong labels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import WeightsIntegrityError
from cnnlab.models.export import export_model
from cnnlab.models.load import load_model
from cnnlab.runtime import load_runtime, prepare_runtime_file

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")
runner = CliRunner()
SMALL = "squeezenet1_1"  # 1.2 M parameters: quick to export and quantise
BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights squeezenet exported by cnnlab, with its sidecar."""
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_model(load_model(SMALL, random_weights=True, device="cpu"), "onnx", path)
    return path


def _variant(exported: Path, folder: Path, name: str, **changes: object) -> Path:
    """A copy of ``exported`` named ``name`` whose sidecar has ``changes`` (nested dicts are merged)."""
    path = folder / f"{name}.onnx"
    shutil.copy(exported, path)
    meta = json.loads(Path(f"{exported}.json").read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(meta.get(key), dict):
            meta[key].update(value)
        else:
            meta[key] = value
    Path(f"{path}.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("damage", ["truncate-model", "truncate-sidecar", "no-marker"])
def test_damaged_cache_entries_are_exported_again(damage: str) -> None:
    first = prepare_runtime_file(SMALL, "onnxruntime", random_weights=True)
    size = first.stat().st_size
    if damage == "truncate-model":
        first.write_bytes(first.read_bytes()[:1000])  # a full disk, a killed copy
    elif damage == "truncate-sidecar":
        side = Path(f"{first}.json")
        side.write_text(side.read_text()[:50])
    else:  # a folder without its completion record (an older cnnlab, a hand-made copy)
        (first.parent / "complete.json").unlink()
    again = prepare_runtime_file(SMALL, "onnxruntime", random_weights=True)
    assert again == first and again.stat().st_size == size
    assert load_runtime(SMALL, "onnxruntime", random_weights=True, device="cpu", threads=1).name.startswith(SMALL)
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


def test_damaged_int8_entries_are_calibrated_again(real_photos: dict[str, Path]) -> None:
    photos = list(real_photos.values())[:2]
    first = prepare_runtime_file(SMALL, "onnxruntime-int8", random_weights=True, calibration=photos)
    size = first.stat().st_size
    first.write_bytes(first.read_bytes()[:1000])
    again = prepare_runtime_file(SMALL, "onnxruntime-int8", random_weights=True, calibration=photos)
    assert again == first and again.stat().st_size == size


@pytest.mark.parametrize("backend", BACKENDS)
def test_sidecar_that_does_not_match_the_graph_is_refused(backend: str, exported: Path, tmp_path: Path,
                                                          real_photos: dict[str, Path]) -> None:
    few = _variant(exported, tmp_path, "few", classes=["a", "b", "c"])
    with pytest.raises(WeightsIntegrityError, match=r"shape \[1, 1000\].*lists 3 classes"):
        load_runtime(str(few), backend, device="cpu", threads=1)
    many = _variant(exported, tmp_path, "many", classes=[f"c{i}" for i in range(2000)])
    with pytest.raises(WeightsIntegrityError, match="lists 2000 classes"):
        load_runtime(str(many), backend, device="cpu", threads=1)
    crop = _variant(exported, tmp_path, "crop", preprocessing={"crop_size": 256, "resize_size": 256})
    with pytest.raises(WeightsIntegrityError, match="does not run on a uint8 batch of 256x256"):
        load_runtime(str(crop), backend, device="cpu", threads=1)
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "--model", str(few), "--backend", backend, "-q"])
    assert result.exit_code == 3 and "lists 3 classes" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_that_are_not_onnx_are_refused(backend: str, exported: Path, tmp_path: Path,
                                             real_photos: dict[str, Path]) -> None:
    truncated = _variant(exported, tmp_path, "truncated")
    truncated.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(WeightsIntegrityError, match=f"{backend} cannot open .*truncated.onnx"):
        load_runtime(str(truncated), backend, device="cpu", threads=1)
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "-m", str(truncated), "--backend", backend])
    assert result.exit_code == 3 and "cannot open" in result.stderr


def test_informative_sidecar_fields_of_any_type_are_tolerated(exported: Path, tmp_path: Path) -> None:
    odd = _variant(exported, tmp_path, "odd", model=["../../x"], source=7, weights_file=5,
                   spec={"arch": {"a": 1}, "num_params": "lots", "gmacs": "x", "acc1": float("nan"), "license": 3})
    model = load_runtime(str(odd), "onnxruntime", device="cpu", threads=1)
    assert model.spec.num_params == 0 and model.spec.gmacs is None and model.spec.acc1 is None
    assert model.spec.arch == "odd" and model.weights_path is None
    bad_quant = _variant(exported, tmp_path, "badq", quantization={"calibration_images": "abc"})
    assert load_runtime(str(bad_quant), "onnxruntime", device="cpu", threads=1).runtime_info()["calibration_images"] == 0


def test_int8_version_of_an_onnx_file_keeps_the_file_name(exported: Path, real_photos: dict[str, Path]) -> None:
    """bench names rows after the runtime: FILE@onnxruntime and FILE@openvino-int8, not the source model."""
    photos = list(real_photos.values())[:2]
    fp32 = load_runtime(str(exported), "onnxruntime", device="cpu", threads=1)
    int8 = load_runtime(str(exported), "openvino-int8", device="cpu", threads=1, calibration=photos)
    assert fp32.name == int8.name == str(exported)
    assert int8.runtime_info()["precision"] == "int8"
    from_cache = load_runtime(SMALL, "onnxruntime-int8", random_weights=True, device="cpu", threads=1,
                              calibration=photos)
    assert from_cache.name == "squeezenet1_1.IMAGENET1K_V1"


def test_random_weights_are_the_same_in_pytorch_and_the_onnx_export() -> None:
    """Random-weight rows of one bench run (torch and its ONNX export) run the same weights, and loading
    them leaves the caller's random numbers alone."""
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    eager = load_model("mobilenet_v3_small", device="cpu", random_weights=True)
    assert torch.equal(torch.rand(1), expected)
    again = load_model("mobilenet_v3_small", device="cpu", random_weights=True)
    for (name, x), y in zip(eager.module.state_dict().items(), again.module.state_dict().values()):
        assert torch.equal(x, y), name
    exported = load_runtime("mobilenet_v3_small", "onnxruntime", random_weights=True, device="cpu")
    batch = (torch.rand(2, 3, 224, 224) * 255).to(torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(eager(batch), exported(batch), atol=1e-3)
