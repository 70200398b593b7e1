"""predict: real photos with the real offline model; every bad-input kind through the CLI."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.models import get_model_weights
from typer.testing import CliRunner

import cnnlab
from cnnlab.cli import app
from cnnlab.errors import UsageError
from cnnlab.models.registry import get_spec
from cnnlab.options import RuntimeOptions
from cnnlab.runtime.loader import load_model
from tests.helpers.images import make_image

runner = CliRunner()
CAT_CLASSES = set(range(281, 286))


@pytest.fixture(scope="module")
def lite0() -> cnnlab.LoadedModel:
    return load_model("efficientnet_lite0", RuntimeOptions(device="cpu"))


def test_real_photos_with_offline_model(real_photos: dict[str, Path], lite0: cnnlab.LoadedModel) -> None:
    result = cnnlab.predict(list(real_photos.values()), model=lite0, topk=5, runtime=cnnlab.RuntimeOptions(workers=0))
    assert not result.skipped
    by_name = {Path(p.path).stem: p for p in result.predictions}
    hopper = [c.label for c in by_name["grace_hopper"].top]
    assert "military uniform" in hopper
    assert by_name["chelsea"].top[0].index in CAT_CLASSES
    assert by_name["coffee"].top[0].label == "espresso"
    probs = [c.probability for c in by_name["coffee"].top]
    assert probs == sorted(probs, reverse=True) and 0.5 < probs[0] <= 1.0


def test_predict_by_name_with_defaults_and_with_runtime_options(real_photos: dict[str, Path]) -> None:
    """The documented call works as written; how the model runs is one RuntimeOptions, checked when made."""
    photos = [real_photos["coffee"]]
    result = cnnlab.predict(photos, model="efficientnet_lite0", topk=5)
    assert result.predictions[0].top[0].label == "espresso" and len(result.predictions[0].top) == 5
    tuned = cnnlab.predict(photos, model=cnnlab.ModelSource(name="efficientnet_lite0"), topk=2,
                           runtime=RuntimeOptions(device="cpu", workers=0, batch_size=1, threads=1))
    assert tuned.predictions[0].top[0].label == "espresso" and tuned.runtime["threads"] == 1
    with pytest.raises(UsageError, match="unknown precision"):
        RuntimeOptions(precision="fp64")


def test_fast_path_matches_torchvision_preset(real_photos: dict[str, Path]) -> None:
    """Our uint8-then-normalise split computes what torchvision's transforms compute."""
    spec = get_spec("resnet50.IMAGENET1K_V1")
    preset = get_model_weights("resnet50")["IMAGENET1K_V1"].transforms()
    img = Image.open(real_photos["cat"]).convert("RGB")
    ours = spec.preprocessing.normalize(spec.preprocessing.to_uint8(img)[None])[0]
    theirs = preset(img)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_bad_files_are_reported_and_others_predicted(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    folder = tmp_path / "mixed"
    good = make_image(folder / "ok.jpg", (80, 60))
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "html.jpg").write_bytes(b"<html>nope</html>")
    data = (real_photos["grace_hopper"]).read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 3])
    Image.new("1", (12000, 12000)).save(folder / "bomb.png")  # 144 Mpx > Pillow's default limit
    make_image(folder / "sub" / "nested.webp", (50, 50))
    make_image(folder / "rgba.png", mode="RGBA")
    result = runner.invoke(app, ["predict", str(folder), "--json", "-q", "--topk", "3"])
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    predicted = {Path(p["path"]).name for p in payload["predictions"]}
    assert predicted == {"ok.jpg", "nested.webp", "rgba.png"}
    reasons = {Path(s["path"]).name: s["reason"] for s in payload["skipped"]}
    assert reasons == {
        "empty.jpg": "empty",
        "html.jpg": "not-an-image",
        "truncated.jpg": "truncated",
        "bomb.png": "decompression-bomb",
    }
    assert all(len(p["top"]) == 3 for p in payload["predictions"])
    assert good.exists()


def test_missing_path_and_glob(tmp_path: Path) -> None:
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "b.png")
    result = runner.invoke(app, ["predict", str(tmp_path / "*.png"), str(tmp_path / "nope.jpg"), "--csv", "-q", "-k", "2"])
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 4 and {Path(r["path"]).name for r in rows} == {"a.png", "b.png"}
    assert "nope.jpg: missing" in result.stderr


def test_table_output_all_good(real_photos: dict[str, Path]) -> None:
    result = runner.invoke(app, ["predict", str(real_photos["coffee"]), "-q"])
    assert result.exit_code == 0
    assert "espresso" in result.stdout


def test_models_cli_lists_and_filters() -> None:
    result = runner.invoke(app, ["models", "res*", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert {r["arch"] for r in rows} >= {"resnet50", "resnet18"}
    assert all(r["arch"].startswith("res") for r in rows)
    lite = json.loads(runner.invoke(app, ["models", "efficientnet_lite0", "--json"]).stdout)
    assert lite[0]["available"] is True
    assert runner.invoke(app, ["models", "zzz*"]).exit_code == 1


def test_clear_errors_for_device_and_checkpoint_typos(tmp_path: Path) -> None:
    img = make_image(tmp_path / "a.png")
    result = runner.invoke(app, ["predict", str(img), "--device", "gpu", "-q"])
    assert result.exit_code != 0 and "unknown device 'gpu'" in result.stderr and "Traceback" not in result.output
    result = runner.invoke(app, ["predict", str(img), "--model", str(tmp_path / "runs" / "best.pt"), "-q"])
    assert result.exit_code == 3 and "does not exist" in result.stderr


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    result = runner.invoke(app, ["predict", str(tmp_path / "nothing"), "-q"])
    assert result.exit_code == 2 and "nothing to predict" in result.stderr


def test_int8_backend_calibrates_on_the_files_to_predict(real_photos: dict[str, Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["predict", *map(str, real_photos.values()), "--backend", "onnxruntime-int8",
                                 "--calibration-images", "2", "--threads", "1", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    runtime = payload["runtime"]
    assert (runtime["backend"], runtime["precision"], runtime["threads"], runtime["calibration_images"]) == (
        "onnxruntime", "int8", 1, 2)
    assert "calibrated on only 2 images" in result.stderr
    coffee = next(p for p in payload["predictions"] if Path(p["path"]).stem == "coffee")
    assert coffee["top"][0]["label"] == "espresso"


def test_nothing_to_predict_is_a_usage_error_before_any_model_loads(tmp_path: Path) -> None:
    """Found by review: `predict emptydir` and `predict nonexist.jpg` printed an empty table with exit 1."""
    (tmp_path / "empty").mkdir()
    for args in ([str(tmp_path / "empty")], [str(tmp_path / "nonexist.jpg")]):
        result = runner.invoke(app, ["predict", *args, "-q", "-m", "no-such-model"])  # the model is never looked up
        assert result.exit_code == 2 and "nothing to predict" in result.stderr, result.output
    both = runner.invoke(app, ["predict", str(tmp_path), "--json", "--csv"])
    assert both.exit_code == 2 and "--json" in both.output


def test_unknown_threshold_marks_none_of_these(tmp_path: Path) -> None:
    """Issue 24, item 4: a checkpoint carries a threshold calibrated on its validation images; predict
    applies it with ``--unknown-threshold auto``, or a probability given; every other path stays as it was."""
    from tests.helpers.images import make_two_colours
    from tests.helpers.runs import SMALL_TRAIN_ARGS

    data = make_two_colours(tmp_path / "data", per_class=10)
    trained = runner.invoke(app, ["train", str(data), "-o", str(tmp_path / "run"), "--freeze", *SMALL_TRAIN_ARGS])
    assert trained.exit_code == 0, trained.output
    best = str(tmp_path / "run" / "best.pt")
    auto = cnnlab.predict([data / "blue"], model=best, topk=1, unknown_threshold="auto")
    assert auto.unknown_threshold is not None and 0 < auto.unknown_threshold <= 1
    assert all(p.unknown == (p.top[0].probability < auto.unknown_threshold) for p in auto.predictions)
    every = runner.invoke(app, ["predict", str(data / "red"), "-m", best, "--unknown-threshold", "1", "--json", "-q"])
    payload = json.loads(every.stdout)
    assert every.exit_code == 0 and payload["unknown_threshold"] == 1.0
    assert all(p["unknown"] for p in payload["predictions"])
    plain = cnnlab.predict([data / "red"], model=best, topk=1)
    assert plain.unknown_threshold is None and not any(p.unknown for p in plain.predictions)
    bad = runner.invoke(app, ["predict", str(data / "red"), "-m", best, "--unknown-threshold", "2", "-q"])
    assert bad.exit_code == 2 and "from 0 to 1" in bad.stderr
    # found by review: the export lost the threshold, so `auto` on the .onnx applied none
    pytest.importorskip("onnxruntime")
    exported = runner.invoke(app, ["export", best, "-o", str(tmp_path / "best.onnx")])
    assert exported.exit_code == 0, exported.output
    onnx = cnnlab.predict([data / "blue"], model=str(tmp_path / "best.onnx"), topk=1, unknown_threshold="auto")
    assert onnx.unknown_threshold == auto.unknown_threshold
