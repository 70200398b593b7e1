"""Backends against broken and hostile files: damaged export-cache entries are made again, and ``.onnx``
files whose sidecar does not match the graph (or that are not ONNX at all) are clear errors (exit 3),
never tracebacks or silently wrong labels."""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import WeightsIntegrityError
from cnnlab.models.export import export_model
from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy
from cnnlab.runtime.artifacts import MAX_SIDECAR_BYTES, read_sidecar
from cnnlab.runtime.base import ExportedModel

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("openvino")
from tests.helpers.runs import load_on, prepare_on

runner = CliRunner()
SMALL = "squeezenet1_1"  # 1.2 M parameters: quick to export and quantise




BACKENDS = ["onnxruntime", "openvino"]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cnnlab-cache"
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(root))
    return root


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding the random-weights ONNX export of SMALL, made once by cnnlab."""
    root = tmp_path_factory.mktemp("pristine") / "cnnlab-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE_DIR", str(root))
        prepare_on(SMALL, "onnxruntime", random_weights=True)
    return root


@pytest.fixture
def cached(cache: Path, pristine: Path) -> Path:
    """This test's cache holding a copy of :func:`pristine`'s whole export, for a test to damage."""
    shutil.copytree(pristine, cache, dirs_exist_ok=True)
    return cache


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weights squeezenet exported by cnnlab, with its sidecar."""
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    export_model(load_torch(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu")), "onnx", path)
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
@pytest.mark.usefixtures("cached")
def test_damaged_cache_entries_are_exported_again(damage: str) -> None:
    first = prepare_on(SMALL, "onnxruntime", random_weights=True)  # the whole entry, found in the cache
    size = first.stat().st_size
    if damage == "truncate-model":
        first.write_bytes(first.read_bytes()[:1000])  # a full disk, a killed copy
    elif damage == "truncate-sidecar":
        side = Path(f"{first}.json")
        side.write_text(side.read_text()[:50])
    else:  # a folder without its completion record (an older cnnlab, a hand-made copy)
        (first.parent / "complete.json").unlink()
    again = prepare_on(SMALL, "onnxruntime", random_weights=True)
    assert again == first and again.stat().st_size == size
    assert load_on(SMALL, "onnxruntime", random_weights=True, device="cpu", threads=1).name.startswith(SMALL)
    assert not [p for p in first.parent.parent.iterdir() if p.name.startswith((".tmp-", ".trash-"))]


@pytest.mark.usefixtures("cached")  # the int8 version is made from the fp32 export there
def test_damaged_int8_entries_are_calibrated_again(real_photos: dict[str, Path]) -> None:
    photos = list(real_photos.values())[:2]
    first = prepare_on(SMALL, "onnxruntime-int8", random_weights=True, calibration=photos)
    size = first.stat().st_size
    first.write_bytes(first.read_bytes()[:1000])
    again = prepare_on(SMALL, "onnxruntime-int8", random_weights=True, calibration=photos)
    assert again == first and again.stat().st_size == size


@pytest.mark.parametrize("backend", BACKENDS)
def test_sidecar_that_does_not_match_the_graph_is_refused(backend: str, exported: Path, tmp_path: Path,
                                                          real_photos: dict[str, Path]) -> None:
    few = _variant(exported, tmp_path, "few", classes=["a", "b", "c"])
    with pytest.raises(WeightsIntegrityError, match=r"shape \[1, 1000\].*lists 3 classes"):
        load_on(str(few), backend, device="cpu", threads=1)
    many = _variant(exported, tmp_path, "many", classes=[f"c{i}" for i in range(2000)])
    with pytest.raises(WeightsIntegrityError, match="lists 2000 classes"):
        load_on(str(many), backend, device="cpu", threads=1)
    crop = _variant(exported, tmp_path, "crop", preprocessing={"crop_size": 256, "resize_size": 256})
    with pytest.raises(WeightsIntegrityError, match="does not run on a uint8 batch of 256x256"):
        load_on(str(crop), backend, device="cpu", threads=1)
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "--model", str(few), "--backend", backend, "-q"])
    assert result.exit_code == 3 and "lists 3 classes" in result.stderr and "Traceback" not in result.output


@pytest.mark.parametrize("backend", BACKENDS)
def test_files_that_are_not_onnx_are_refused(backend: str, exported: Path, tmp_path: Path,
                                             real_photos: dict[str, Path]) -> None:
    truncated = _variant(exported, tmp_path, "truncated")
    truncated.write_bytes(exported.read_bytes()[:5000])
    with pytest.raises(WeightsIntegrityError, match=f"{backend} cannot open .*truncated.onnx"):
        load_on(str(truncated), backend, device="cpu", threads=1)
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "-m", str(truncated), "--backend", backend])
    assert result.exit_code == 3 and "cannot open" in result.stderr


def test_informative_sidecar_fields_of_any_type_are_tolerated(exported: Path, tmp_path: Path) -> None:
    odd = _variant(exported, tmp_path, "odd", model=["../../x"], source=7, weights_file=5,
                   spec={"arch": {"a": 1}, "num_params": "lots", "gmacs": "x", "acc1": float("nan"), "license": 3})
    model = load_on(str(odd), "onnxruntime", device="cpu", threads=1)
    assert model.spec.num_params == 0 and model.spec.gmacs is None and model.spec.acc1 is None
    assert model.spec.arch == "odd" and model.weights_path is None
    bad_quant = _variant(exported, tmp_path, "badq", quantization={"calibration_images": "abc"})
    assert load_on(str(bad_quant), "onnxruntime", device="cpu", threads=1).runtime_info()["calibration_images"] == 0


def test_int8_version_of_an_onnx_file_keeps_the_file_name(exported: Path, real_photos: dict[str, Path]) -> None:
    """bench names rows after the runtime: FILE@onnxruntime and FILE@openvino-int8, not the source model."""
    photos = list(real_photos.values())[:2]
    fp32 = load_on(str(exported), "onnxruntime", device="cpu", threads=1)
    int8 = load_on(str(exported), "openvino-int8", device="cpu", threads=1, calibration=photos)
    assert fp32.name == int8.name == str(exported)
    assert int8.runtime_info()["precision"] == "int8"
    from_cache = load_on(SMALL, "onnxruntime-int8", random_weights=True, device="cpu", threads=1,
                              calibration=photos)
    assert from_cache.name == "squeezenet1_1.IMAGENET1K_V1"


def test_random_weights_are_the_same_in_pytorch_and_the_onnx_export() -> None:
    """Random-weight rows of one bench run (torch and its ONNX export) run the same weights, and loading
    them leaves the caller's random numbers alone."""
    import torch

    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    eager = load_torch(ModelSource(name="mobilenet_v3_small", policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    assert torch.equal(torch.rand(1), expected)
    again = load_torch(ModelSource(name="mobilenet_v3_small", policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    for (name, x), y in zip(eager.module.state_dict().items(), again.module.state_dict().values()):
        assert torch.equal(x, y), name
    exported = load_on("mobilenet_v3_small", "onnxruntime", random_weights=True, device="cpu")
    batch = (torch.rand(2, 3, 224, 224) * 255).to(torch.uint8)
    with torch.inference_mode():
        assert torch.allclose(eager(batch), exported(batch), atol=1e-3)


def _batch_ignoring_graph(folder: Path, exported: Path, name: str, *, copy_rows: bool) -> Path:
    """A 3-class ONNX file (with a cnnlab sidecar) whose outputs come from the first image of a batch only:
    one row for any batch, or (``copy_rows``) that row repeated for every image."""
    import onnx
    from onnx import TensorProto, helper

    size = 32
    nodes = [
        helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("ReduceMean", ["xf"], ["means"], axes=[2, 3], keepdims=0),  # (N, 3)
        helper.make_node("Reshape", ["means", "one_row"], ["flat"]),  # (1, 3N): the Reshape that keeps one row
        helper.make_node("Slice", ["flat", "starts", "ends", "axes"], ["first"]),  # (1, 3): the first image's
    ]
    inits = [helper.make_tensor("one_row", TensorProto.INT64, [2], [1, -1]),
             helper.make_tensor("starts", TensorProto.INT64, [1], [0]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    if copy_rows:  # broadcast the first image's row to the batch: (N, 3), every row the same
        nodes += [helper.make_node("Shape", ["means"], ["shape"]),
                  helper.make_node("Expand", ["first", "shape"], ["logits"])]
    else:
        nodes.append(helper.make_node("Identity", ["first"], ["logits"]))
    graph = helper.make_graph(
        nodes, "first-image-only",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)], inits)
    path = folder / f"{name}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    meta = json.loads(Path(f"{exported}.json").read_text())
    meta.update(classes=["red", "green", "blue"], model=name, quantization=None)
    meta["preprocessing"].update(crop_size=size, resize_size=size)
    Path(f"{path}.json").write_text(json.dumps(meta))
    return path


@pytest.mark.parametrize("copy_rows", [False, True], ids=["one-row", "copied-rows"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_graph_that_ignores_the_batch_dimension_is_refused(backend: str, copy_rows: bool, exported: Path,
                                                             tmp_path: Path, real_photos: dict[str, Path]) -> None:
    """Issue 27 item 4: bench copied one image's outputs to the whole batch (exit 0, wrong top-1); predict
    ended in an IndexError. Both now refuse the file, naming the batch dimension."""
    path = _batch_ignoring_graph(tmp_path, exported, "first-only", copy_rows=copy_rows)
    with pytest.raises(WeightsIntegrityError, match="ignores the batch dimension"):
        load_on(str(path), backend, device="cpu", threads=1)
    photos = [str(p) for p in list(real_photos.values())[:3]]
    result = runner.invoke(app, ["predict", *photos, "-m", str(path), "--backend", backend, "-q"])
    assert result.exit_code == 3 and "ignores the batch dimension" in result.stderr, result.output
    assert "Traceback" not in result.output


def test_a_runtime_whose_outputs_lose_the_batch_is_an_error_not_a_broadcast(exported: Path) -> None:
    """The check at every call: a graph that passed the load-time check but answers a batch with one row."""
    import numpy as np
    import torch

    model = load_on(str(exported), "onnxruntime", device="cpu", threads=1)
    assert isinstance(model, ExportedModel)
    model.run = lambda batch: np.zeros((1, 1000), dtype=np.float32)
    with pytest.raises(WeightsIntegrityError, match="outputs of shape \\[1, 1000\\] for a batch of 2 images"):
        model(torch.zeros(2, 3, 224, 224, dtype=torch.uint8))


def test_a_sidecar_listing_a_class_twice_is_refused(exported: Path, tmp_path: Path,
                                                    real_photos: dict[str, Path]) -> None:
    """Issue 27 item 10: like a checkpoint with duplicate classes (a class named twice scores 0 on its images)."""
    twice = _variant(exported, tmp_path, "twice", classes=["cat", "cat", *[f"c{i}" for i in range(998)]])
    with pytest.raises(WeightsIntegrityError, match=r"duplicate names \(cat\)"):
        load_on(str(twice), "onnxruntime", device="cpu", threads=1)
    result = runner.invoke(app, ["predict", str(real_photos["cat"]), "-m", str(twice), "-q"])
    assert result.exit_code == 3 and "duplicate names" in result.stderr


def test_special_files_are_refused_without_blocking(exported: Path, tmp_path: Path) -> None:
    """Issue 27 item 5: a FIFO sidecar hung predict and bench for ever, a link to /dev/zero was read without
    bound, and a FIFO model file was reported as missing."""
    import os

    fifo_meta = _variant(exported, tmp_path, "fifo-meta")
    Path(f"{fifo_meta}.json").unlink()
    os.mkfifo(f"{fifo_meta}.json")
    with pytest.raises(WeightsIntegrityError, match="not-a-file"):
        read_sidecar(fifo_meta)
    if Path("/dev/zero").exists():
        zero_meta = _variant(exported, tmp_path, "zero-meta")
        Path(f"{zero_meta}.json").unlink()
        Path(f"{zero_meta}.json").symlink_to("/dev/zero")
        with pytest.raises(WeightsIntegrityError, match="cannot read the metadata file"):
            read_sidecar(zero_meta)
    huge = _variant(exported, tmp_path, "huge")
    with open(f"{huge}.json", "ab") as fh:
        fh.truncate(MAX_SIDECAR_BYTES + 1)  # sparse: no disk used
    with pytest.raises(WeightsIntegrityError, match="too-large"):
        read_sidecar(huge)
    fifo_model = tmp_path / "fifo-model.onnx"
    os.mkfifo(fifo_model)
    shutil.copy(f"{exported}.json", f"{fifo_model}.json")
    with pytest.raises(WeightsIntegrityError, match="is not a regular file"):
        read_sidecar(fifo_model)


SIDECAR_HOSTILE = {
    "not-an-object": ({"__whole__": ["a", "b"]}, "must hold a JSON object"),
    "preprocessing-is-text": ({"preprocessing": "imagenet"}, "'preprocessing' must be a mapping"),
    "true-as-size": ({"preprocessing": {"crop_size": True}}, "'preprocessing.crop_size'"),
    "crop-far-above-resize": ({"preprocessing": {"resize_size": 16, "crop_size": 224}}, "padding"),
    "tiny-std": ({"preprocessing": {"std": [1e-30, 0.2, 0.2]}}, "'preprocessing.std'"),
    "huge-mean": ({"preprocessing": {"mean": [1e30, 0.4, 0.4]}}, "'preprocessing.mean'"),
    "quantization-is-text": ({"quantization": "int8"}, "'quantization' must be a mapping"),
    "input-is-text": ({"input": "uint8"}, "'input' must be a mapping"),
}


@pytest.mark.parametrize("changes,expected", list(SIDECAR_HOSTILE.values()), ids=list(SIDECAR_HOSTILE))
def test_hostile_sidecar_values_are_refused_naming_file_and_field(exported: Path, tmp_path: Path,
                                                                  changes: dict[str, Any], expected: str) -> None:
    """Issue 27 (untrusted metadata): `True` was read as crop size 1 and a 1e-30 std ran (every logit inf); one
    place (cnnlab.models.metadata) now refuses them, as it does for checkpoints, naming the sidecar and field."""
    path = _variant(exported, tmp_path, "edited")
    if "__whole__" in changes:
        Path(f"{path}.json").write_text(json.dumps(changes["__whole__"]))
    else:
        meta = json.loads(Path(f"{path}.json").read_text())
        for key, value in changes.items():
            meta[key] = {**meta[key], **value} if isinstance(value, dict) and isinstance(meta.get(key), dict) else value
        Path(f"{path}.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsIntegrityError) as info:
        load_on(str(path), "onnxruntime", device="cpu", threads=1)
    assert f"{path}.json" in str(info.value) and expected in str(info.value), str(info.value)


def test_deeply_nested_sidecar_is_refused(exported: Path, tmp_path: Path) -> None:
    path = _variant(exported, tmp_path, "deep")
    meta = json.loads(Path(f"{path}.json").read_text())
    meta["check"] = functools.reduce(lambda inner, _: [inner], range(500), [])
    Path(f"{path}.json").write_text(json.dumps(meta))
    with pytest.raises(WeightsIntegrityError, match="nested more than"):
        read_sidecar(path)


def test_a_cache_marker_that_is_a_fifo_is_made_again_without_blocking(exported: Path, cache: Path) -> None:
    """complete.json was read without a bound: a FIFO there hung every run that used the cache entry."""
    import os

    from cnnlab.runtime.artifacts import COMPLETE, cache_entry_ok

    folder = cache / "exports" / "entry"
    folder.mkdir(parents=True)
    shutil.copy(exported, folder / "model.onnx")
    shutil.copy(f"{exported}.json", folder / "model.onnx.json")
    os.mkfifo(folder / COMPLETE)
    assert cache_entry_ok(folder) is False


def test_quantising_external_data_behind_a_link_is_a_clear_error(tmp_path: Path,
                                                                 real_photos: dict[str, Path]) -> None:
    """Issue 27: an ONNX file whose weights are an external data file reached through a symbolic link failed
    half-way through quantisation with onnx's bare ValidationError."""
    import onnx

    from cnnlab.runtime.quantize import quantized_file

    source = load_torch(ModelSource(name=SMALL, policy=WeightsPolicy.RANDOM), RuntimeOptions(device="cpu"))
    folder = tmp_path / "model"
    folder.mkdir()
    path = export_model(source, "onnx", folder / "ext.onnx").path
    model = onnx.load(str(path))
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data",
              size_threshold=0)
    elsewhere = tmp_path / "elsewhere.data"
    (folder / "ext.data").rename(elsewhere)
    (folder / "ext.data").symlink_to(elsewhere)
    with pytest.raises(WeightsIntegrityError, match=r"'ext.data' .* is a symbolic link"):
        quantized_file(path, [real_photos["cat"]])


def test_a_checkpoint_rewritten_while_it_is_exported_is_not_cached_under_its_old_digest(
        tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run saving best.pt while predict exports it: the export would carry the old bytes' name."""
    from cnnlab.runtime import artifacts
    from cnnlab.train import TrainConfig, fine_tune
    from tests.helpers.images import make_two_colours

    data = make_two_colours(tmp_path / "data", per_class=6)
    run = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"), model=SMALL, random_weights=True,
                                image_size=32, workers=0, freeze=True))
    write_facts = artifacts._write_checkpoint_facts

    def and_then_rewrite(checkpoint: str, folder: Path) -> None:
        write_facts(checkpoint, folder)
        with open(checkpoint, "ab") as fh:
            fh.write(b"\0")

    monkeypatch.setattr(artifacts, "_write_checkpoint_facts", and_then_rewrite)
    with pytest.raises(WeightsIntegrityError, match="changed while it was exported"):
        artifacts.cached_export(str(run.best_path))
    assert not [p for p in (cache / "exports").iterdir() if not p.name.startswith(".")]
    assert artifacts.cached_checkpoint_export(run.best_path) is None
