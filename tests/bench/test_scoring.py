"""bench at the size of real use: ImageNet validation layouts, ReaL labels, many classes, output folders."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnnlab.bench import BenchConfig, BenchResult, MeasureOptions, ModelResult, bench_models, write_bench_outputs
from cnnlab.bench.protocol import PREDICTION_DTYPE, RunResult
from cnnlab.bench.scoring import score
from cnnlab.bench.user_classes import UserClasses
from cnnlab.cli import app
from cnnlab.errors import DatasetError, UsageError
from cnnlab.imagedata.datasets import scan_dataset
from cnnlab.imagedata.imagenet_val import read_ground_truth, read_real_labels, scan_flat_val
from cnnlab.imagedata.labels import imagenet_categories, imagenet_wnids, map_classes
from cnnlab.models.registry import get_spec
from tests.helpers.images import make_image

runner = CliRunner()
FAST = MeasureOptions(latency_repeats=3, throughput_repeats=3, warmup=1, batch_size=8, workers=0)
WNIDS = imagenet_wnids()
TIGER_CAT, ESPRESSO = 282, 967  # what efficientnet_lite0 predicts for chelsea and coffee


def _val_folder(tmp_path: Path, real_photos: dict[str, Path]) -> Path:
    """A flat validation folder of real photos named as ImageNet's validation images."""
    folder = tmp_path / "val"
    folder.mkdir()
    from PIL import Image

    for number, key in ((1, "cat"), (2, "coffee"), (3, "cat"), (4, "coffee")):
        Image.open(real_photos[key]).convert("RGB").save(folder / f"ILSVRC2012_val_{number:08d}.JPEG", quality=95)
    return folder


def test_ground_truth_formats_agree(tmp_path: Path) -> None:
    import scipy.io

    loc = tmp_path / "LOC_val_solution.csv"
    loc.write_text("ImageId,PredictionString\nILSVRC2012_val_00000002,n07920052 1 2 3 4 n07920052 5 6 7 8\n"
                   "ILSVRC2012_val_00000001,n02123159 1 2 3 4\n", encoding="utf-8")
    # the devkit numbers classes by ILSVRC2012_ID (not by sorted wnid): give the two ids in reverse
    devkit = tmp_path / "ILSVRC2012_devkit_t12" / "data"
    devkit.mkdir(parents=True)
    synsets = np.zeros((3, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for i, (ident, wnid, children) in enumerate([(1, "n07920052", 0), (2, "n02123159", 0), (1001, "n00001740", 3)]):
        synsets[i, 0] = (np.array([[ident]]), np.array([wnid]), np.array([[children]]))
    scipy.io.savemat(devkit / "meta.mat", {"synsets": synsets})
    (devkit / "ILSVRC2012_validation_ground_truth.txt").write_text("2\n1\n", encoding="ascii")
    plain = tmp_path / "labels.csv"
    plain.write_text("\ufefffilename,wnid\nILSVRC2012_val_00000001.JPEG,n02123159\nILSVRC2012_val_00000002.JPEG,n07920052\n",
                     encoding="utf-8")
    expected = {"ILSVRC2012_val_00000001": "n02123159", "ILSVRC2012_val_00000002": "n07920052"}
    assert read_ground_truth(loc) == read_ground_truth(devkit.parent) == read_ground_truth(plain) == expected
    (devkit / "meta.mat").unlink()
    with pytest.raises(DatasetError, match="meta.mat"):
        read_ground_truth(devkit / "ILSVRC2012_validation_ground_truth.txt")
    bad = tmp_path / "bad.csv"
    bad.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,cat\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="bad.csv:2"):
        read_ground_truth(bad)


def test_flat_validation_folder_with_real_labels(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    folder = _val_folder(tmp_path, real_photos)
    make_image(folder / "holiday.jpg")  # not a validation image: not in the ground truth
    labels = tmp_path / "LOC_val_solution.csv"
    rows = [(1, WNIDS[TIGER_CAT]), (2, WNIDS[ESPRESSO]), (3, WNIDS[281]), (4, WNIDS[ESPRESSO])]  # image 3: tabby
    labels.write_text("ImageId,PredictionString\n" + "".join(f"ILSVRC2012_val_{n:08d},{w} 0 0 9 9\n" for n, w in rows),
                      encoding="utf-8")
    real = tmp_path / "real.json"
    real.write_text(json.dumps([[TIGER_CAT], [ESPRESSO], [281, TIGER_CAT], []]))  # image 4: no correct class
    data = scan_flat_val(folder, labels)
    assert len(data) == 4 and [s.reason for s in data.skipped] == ["unlabelled"]
    assert read_real_labels(real)[2] == (281, TIGER_CAT)
    result = bench_models(BenchConfig(data=folder, labels_file=labels, real_labels=real, models=["efficientnet_lite0"],
                                      measure=FAST, isolate=False))
    (model,) = result.models
    assert model.accuracy is not None
    assert model.accuracy.summary.hits[1] == 3  # the tabby label is wrong for chelsea (a tiger cat)
    real_acc = model.accuracy.real
    assert real_acc is not None and (real_acc.n, real_acc.empty_sets, real_acc.hits[1]) == (3, 1, 3)
    assert model.flat()["real_top1"] == 1.0
    (mistake,) = model.accuracy.mistakes
    assert Path(mistake["path"]).name == "ILSVRC2012_val_00000003.JPEG" and mistake["true"] == WNIDS[281]


def test_calibration_uses_the_mass_of_the_predicted_user_class() -> None:
    # outputs 0,1 are "cat", 2 is "dog", 3 is claimed by both (ambiguous), 4 by none
    classes = UserClasses([{0, 1, 3}, {2, 3}], num_outputs=5)
    probs = torch.tensor([[0.5, 0.3, 0.1, 0.05, 0.05],   # top-1 output 0: cat, mass 0.5 + 0.3 + 0.05
                          [0.1, 0.0, 0.6, 0.2, 0.1],     # top-1 output 2: dog, mass 0.6 + 0.2
                          [0.1, 0.1, 0.1, 0.6, 0.1],     # top-1 output 3: ambiguous -> other, mass 1 - 0.9
                          [0.1, 0.1, 0.1, 0.1, 0.6]])    # top-1 output 4: other, mass 0.6
    pred, mass = classes.predicted(probs, probs.argmax(1))
    assert pred.tolist() == [0, 1, -1, -1]
    torch.testing.assert_close(mass, torch.tensor([0.85, 0.8, 0.1, 0.6]))


def _thousand_class_result(tmp_path: Path) -> BenchResult:
    """1000 wnid folders of one image each, scored from synthetic predictions (70% right) of an ImageNet model.

    The model's arithmetic is not what this tests (the end-to-end run is benchmarks/bench_scale.py):
    scoring, the files and the plots are, at 1000 classes.
    """
    data = tmp_path / "imagenet"
    for wnid in WNIDS:
        make_image(data / wnid / "a.png", (16, 16))
    dataset = scan_dataset(data)
    mappings = map_classes(dataset.classes)
    n = len(dataset)
    rng = np.random.default_rng(0)
    top1 = np.where(rng.random(n) < 0.7, np.arange(n), rng.integers(0, 1000, n))
    records = np.zeros(n, dtype=PREDICTION_DTYPE)
    records["row"] = np.arange(n)
    records["topk"] = (top1[:, None] + np.arange(5)[None, :]) % 1000
    records["probs"] = [0.6, 0.2, 0.1, 0.05, 0.05]
    records["pred_class"] = top1  # class i is ImageNet output i: the folders are the sorted wnids
    records["pred_mass"] = 0.6
    spec = get_spec("efficientnet_lite0").to_dict()
    run = RunResult(model="efficientnet_lite0", spec=spec, categories=imagenet_categories(), topk=5, eval_images=n,
                    eval_total_s=10.0, eval_data_s=2.0, eval_model_s=8.0, throughput_ips=120.0, rss_peak_mib=300.0)
    model = ModelResult(run, predictions=records)
    model.accuracy = score(model, dataset, mappings)
    return BenchResult(config=BenchConfig(data=data, models=["efficientnet_lite0"]), dataset=dataset,
                       mappings=mappings, models=[model], comparisons=[], environment={}, started="", finished="")


def test_a_thousand_class_run_stays_small(tmp_path: Path) -> None:
    """results.json grows with classes (not squared), the confusion matrix is kept sparse, plots stay readable."""
    result = _thousand_class_result(tmp_path)
    (model,) = result.models
    assert model.accuracy is not None and model.accuracy.scored == 1000
    top1 = model.accuracy.summary.hits[1]
    assert 650 < top1 < 800  # 70% right by construction, plus lucky draws
    confusion = model.accuracy.confusion
    assert int(confusion.count.sum()) == 1000 and len(confusion.count) <= 1000
    assert int(confusion.count[confusion.true == confusion.predicted].sum()) == top1
    files = write_bench_outputs(result, tmp_path / "out")
    payload = json.loads(files["json"].read_text(encoding="utf-8"))
    (row,) = payload["models"]
    assert len(row["accuracy"]["per_class"]) == 1000 and "confusion" not in row["accuracy"]
    assert files["json"].stat().st_size < 2_000_000
    cells = list(csv.DictReader(files["confusion_csv_efficientnet_lite0.IMAGENET1K"].open(encoding="utf-8")))
    assert sum(int(c["count"]) for c in cells) == 1000
    html = files["html"].read_text(encoding="utf-8")
    assert "The class pairs efficientnet_lite0.IMAGENET1K confuses most" in html
    assert files["per_class"].is_file()
    from PIL import Image

    for key, path in files.items():
        if path.suffix == ".png":
            with Image.open(path) as img:
                assert img.width * img.height < 4_000_000, key


def test_output_folder_rules(tmp_path: Path, real_photos: dict[str, Path]) -> None:
    data = tmp_path / "data"
    for name in ("cat", "coffee"):
        (data / name).mkdir(parents=True)
        shutil.copy(real_photos[name], data / name / real_photos[name].name)
    out = tmp_path / "out"
    args = ["bench", str(data), "-m", "squeezenet1_1", "--random-weights", "-q", "--in-process", "--workers", "0",
            "--repeats", "3", "--no-plots", "-o", str(out)]
    mine = tmp_path / "mine"  # a folder of the user's that happens to have a predictions/ folder
    (mine / "predictions").mkdir(parents=True)
    (mine / "predictions" / "notes.txt").write_text("my notes\n", encoding="utf-8")
    assert runner.invoke(app, [*args[:-1], str(mine)]).exit_code == 0  # not an earlier run: nothing refused
    assert (mine / "predictions" / "notes.txt").read_text(encoding="utf-8") == "my notes\n"
    assert runner.invoke(app, args).exit_code == 0
    written = sorted(p.name for p in (out / "predictions").iterdir())
    (out / "predictions" / "stale.csv").write_text("not bench's\n", encoding="utf-8")
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "earlier bench run" in again.stderr and "overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    # found by review: --overwrite deleted the whole predictions/ folder; it replaces only what bench listed
    assert (out / "predictions" / "stale.csv").exists()
    assert sorted(p.name for p in (out / "predictions").iterdir()) == sorted([*written, "stale.csv"])
    as_file = tmp_path / "a_file"
    as_file.write_text("x", encoding="utf-8")
    result = runner.invoke(app, [*args[:-1], str(as_file)])
    assert result.exit_code == 2 and "a file, not a folder" in result.stderr
    result = runner.invoke(app, ["bench", str(data), "--models", "", "-o", str(tmp_path / "o2")])
    assert result.exit_code == 2 and "names no model" in result.output


@pytest.mark.parametrize("where", ["cat", ".", "cat/deeper"])
def test_an_output_folder_inside_the_data_is_refused_before_anything_is_made(tmp_path: Path, where: str) -> None:
    """Issue 27 item 3: ``--out data/cat`` made the next run read the plots as cat images (another top-1,
    exit 0); ``--out data`` added confusion/ and predictions/ as classes."""
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        make_image(data / name / "1.png")
    before = sorted(p.relative_to(data) for p in data.rglob("*"))
    config = BenchConfig(data=data, models=["squeezenet1_1"], isolate=False,
                         measure=MeasureOptions(weights="random", workers=0, latency_repeats=3, throughput_repeats=3))
    with pytest.raises(UsageError, match="inside the data folder|is the data folder"):
        bench_models(config, out=data / where)
    result = runner.invoke(app, ["bench", str(data), "-m", "squeezenet1_1", "--random-weights", "-q", "-o",
                                 str(data / where)])
    assert result.exit_code == 2 and "data folder" in result.stderr
    assert sorted(p.relative_to(data) for p in data.rglob("*")) == before


def test_a_hidden_folder_inside_the_data_may_hold_the_outputs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("cat", "dog"):
        make_image(data / name / "1.png")
    config = BenchConfig(data=data, models=["squeezenet1_1"], isolate=False,
                         measure=MeasureOptions(weights="random", workers=0, latency_repeats=3, throughput_repeats=3))
    result = bench_models(config, out=data / ".cnnlab" / "bench", plots=False)
    assert result.files["json"] == data / ".cnnlab" / "bench" / "results.json" and result.files["json"].is_file()
    assert not result.failed and result.dataset.classes == ["cat", "dog"]
    compute_only = bench_models(config)
    assert compute_only.files == {} and not compute_only.failed


def test_undecodable_class_names_and_user_files_in_the_output_folder(tmp_path: Path,
                                                                     real_photos: dict[str, Path]) -> None:
    """A class folder whose name is not UTF-8 is shown as \\xNN in every report; --overwrite deletes only
    the files of the earlier run, never a user's own picture in the folder."""
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    shutil.copy(real_photos["cat"], data / "cat" / "chelsea.png")
    odd = os.fsdecode(os.fsencode(str(data)) + b"/caf\xe9")
    os.mkdir(odd)
    make_image(Path(odd) / "1.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_photo.png").write_bytes(b"mine")
    args = ["bench", str(data), "-m", "efficientnet_lite0", "-o", str(out), "-q", "--in-process", "--workers", "0",
            "--repeats", "3", "-b", "4"]
    assert runner.invoke(app, args).exit_code == 0  # a folder with other files is fine
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "earlier bench run" in again.stderr  # ... one with an earlier run is not
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert (out / "my_photo.png").read_bytes() == b"mine"
    assert "caf\\xe9" in (out / "results.md").read_text(encoding="utf-8")
    assert "caf\\xe9" in (out / "report.html").read_text(encoding="utf-8")
    assert (out / "per_class.png").is_file()


def test_folders_sharing_imagenet_classes_are_made_disjoint() -> None:
    from cnnlab.imagedata.labels import disjoint_mappings

    mappings = disjoint_mappings(map_classes(["cat", "tiger cat", "dog"]))
    assert TIGER_CAT in mappings["tiger cat"].indices and TIGER_CAT not in mappings["cat"].indices
    assert "282 tiger cat left to 'tiger cat'" in mappings["cat"].note
    assert mappings["dog"] == map_classes(["dog"])["dog"]
