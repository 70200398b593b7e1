"""The leakage guard: the data record in checkpoints and cnnlab.models.leakage.overlap."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.models.checkpoint import read_checkpoint
from cnnlab.models.leakage import file_digests, make_record, overlap, record_from_json, record_to_json, recorded_paths
from cnnlab.options import RuntimeOptions
from cnnlab.progress import Progress
from cnnlab.train import TrainConfig, TrainResult, fine_tune
from tests.helpers.images import make_colours


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    """A probe-only run (seconds): small random-weights model, 32 px."""
    data = make_colours(tmp_path_factory.mktemp("leak") / "data")
    return fine_tune(TrainConfig(data=str(data), out=str(data.parent / "run"), model="squeezenet1_1",
                                 random_weights=True, image_size=32, workers=0, freeze=True))


def test_checkpoint_records_what_it_was_trained_and_validated_on(probe_run: TrainResult) -> None:
    ckpt = read_checkpoint(probe_run.best_path)
    record = ckpt["data_record"]
    assert record["hash"] == "sha256[:8]" and set(record["splits"]) == {"train", "val"}
    train = record["splits"]["train"]
    assert train["count"] == probe_run.n_train  # the broken file included: it was in the split
    assert train["digests"].dtype == torch.int64 and train["digests"].shape == (train["count"],)
    names = recorded_paths(train)
    assert len(names) == train["count"] and all(n.count("/") == 1 for n in names)  # relative to the data root
    assert Path(train["root"], names[0]).is_file()


def test_overlap_finds_byte_identical_copies_and_nothing_else(probe_run: TrainResult, tmp_path: Path) -> None:
    rows = [line.split(",") for line in (probe_run.out / "data_split.csv").read_text().splitlines()[1:]]
    rows = [[str((probe_run.out / row[0]).resolve()), *row[1:]] for row in rows]  # paths relative to the CSV
    train = [Path(p) for p, _, split in rows if split == "train" and not p.endswith(".jpg")]
    val = [Path(p) for p, _, split in rows if split == "val"]
    evaluated = tmp_path / "eval"
    evaluated.mkdir()
    copies = [shutil.copy(train[0], evaluated / "a.png"), shutil.copy(train[1], evaluated / "b.png"),
              shutil.copy(val[0], evaluated / "c.png")]
    buffer = io.BytesIO()
    Image.open(train[2]).save(buffer, format="PNG", compress_level=1)  # same pixels, other bytes
    (evaluated / "re-encoded.png").write_bytes(buffer.getvalue())
    Image.new("RGB", (40, 40), (1, 2, 3)).save(evaluated / "new.png")
    paths = sorted(evaluated.iterdir())

    report = overlap(probe_run.best_path, paths)
    assert report.recorded and report.checked == 5 and report.overlapping == 3
    assert report.counts == {"train": 2, "val": 1}
    assert sorted(Path(p).name for p in report.examples["train"]) == ["a.png", "b.png"]
    message = report.message()
    assert message is not None and "3 of 5" in message and "2 in its train split" in message
    assert report.to_dict()["overlapping"] == 3

    clean = overlap(read_checkpoint(probe_run.best_path), [evaluated / "new.png", evaluated / "re-encoded.png"])
    assert clean.ok and clean.message() is None
    digests = file_digests(copies)  # computed once, reused for several checkpoints
    assert overlap(probe_run.last_path, copies, digests=digests).overlapping == 3


def test_a_checkpoint_without_a_record_says_so(probe_run: TrainResult) -> None:
    ckpt = {k: v for k, v in read_checkpoint(probe_run.best_path).items() if k != "data_record"}
    report = overlap(ckpt, [probe_run.best_path])
    assert not report.recorded and "not checked" in (report.message() or "")


def test_the_record_stays_small_for_100k_images(tmp_path: Path) -> None:
    """8 bytes of digest per image plus zlib-compressed paths: about 1 MB for 100k images."""
    root = tmp_path / "photos"
    paths = [root / f"class{i % 50:02d}" / f"img_{i:06d}.jpg" for i in range(100_000)]  # unreadable: digest 0
    record = make_record({"train": (root, paths[:80_000]), "val": (root, paths[80_000:])})
    buffer = io.BytesIO()
    torch.save(record, buffer)
    assert buffer.tell() < 1.5e6, buffer.tell()
    assert recorded_paths(record["splits"]["val"])[:1] == ["class00/img_080000.jpg"]
    assert np.all(record["splits"]["train"]["digests"].numpy() == 0)


def test_a_record_as_json_reads_back_the_same_and_damage_is_an_error(probe_run: TrainResult, tmp_path: Path) -> None:
    """The form the export cache keeps next to a checkpoint's ONNX file (read there without torch)."""
    import json

    record = read_checkpoint(probe_run.best_path)["data_record"]
    continued = {**record, "inherited": {"from": "runs/x/best.pt", "record": record}}  # a run continued from another
    back = record_from_json(json.loads(json.dumps(record_to_json(continued))))
    assert back["inherited"]["from"] == "runs/x/best.pt"
    for ours, theirs in ((back, continued), (back["inherited"]["record"], record)):
        for name, entry in theirs["splits"].items():
            assert np.array_equal(ours["splits"][name]["digests"], entry["digests"].numpy())
            assert recorded_paths(ours["splits"][name]) == recorded_paths(entry)
            assert (ours["splits"][name]["count"], ours["splits"][name]["root"]) == (entry["count"], entry["root"])
    paths = [*_evaluated(probe_run, tmp_path), tmp_path / "red" / "new.png"]
    kept = overlap({"data_record": record_from_json(record_to_json(record))}, paths, source="best.pt")
    assert kept.to_dict() == overlap(probe_run.best_path, paths).to_dict() | {"source": "best.pt"}
    assert kept.counts == {"train": 2, "val": 1}
    for unwritable in ({**record, "hash": None}, {**record, "splits": {"train": {"digests": torch.zeros(1)}}}):
        with pytest.raises((KeyError, ValueError)):
            record_to_json(unwritable)  # the export then keeps no facts and predict reads the checkpoint
    good = record_to_json(record)
    for damaged in ({**good, "hash": "md5"}, {**good, "splits": {"train": {**good["splits"]["train"], "count": 1}}},
                    {**good, "splits": {"train": {**good["splits"]["train"], "digests": "@@"}}}, {"splits": {}},
                    {**good, "splits": {"train": {**good["splits"]["train"], "count": float("inf")}}},
                    [], None):
        with pytest.raises(ValueError):
            record_from_json(damaged)


class _Notes(Progress):
    def __init__(self) -> None:
        self.notes: list[tuple[str, bool]] = []

    def note(self, message: str, *, warning: bool = False) -> None:
        self.notes.append((message, warning))


def _evaluated(probe_run: TrainResult, root: Path) -> list[Path]:
    """Two training images and one validation image copied byte for byte, and one new image."""
    rows = [line.split(",") for line in (probe_run.out / "data_split.csv").read_text().splitlines()[1:]]
    rows = [[str((probe_run.out / row[0]).resolve()), *row[1:]] for row in rows]  # paths relative to the CSV
    train = [Path(p) for p, _, split in rows if split == "train" and not p.endswith(".jpg")]
    val = [Path(p) for p, _, split in rows if split == "val"]
    (root / "red").mkdir(parents=True)
    copies = [shutil.copy(train[0], root / "red" / "a.png"), shutil.copy(train[1], root / "red" / "b.png"),
              shutil.copy(val[0], root / "red" / "c.png")]
    Image.new("RGB", (40, 40), (200, 10, 10)).save(root / "red" / "new.png")
    return [Path(c) for c in copies]


def test_bench_warns_about_and_records_images_a_checkpoint_was_trained_on(probe_run: TrainResult,
                                                                           tmp_path: Path) -> None:
    from cnnlab.bench import BenchConfig, MeasureOptions, bench_models

    _evaluated(probe_run, tmp_path / "eval")
    notes = _Notes()
    measure = MeasureOptions(workers=0, warmup=1, latency_repeats=3, throughput_repeats=3, batch_size=4)
    result = bench_models(BenchConfig(data=tmp_path / "eval", models=[str(probe_run.best_path)], measure=measure,
                                      isolate=False), progress=notes)
    (model,) = result.models
    assert model.ok, model.run.error
    assert model.leakage is not None and model.leakage["overlapping"] == 3 and model.leakage["checked"] == 4
    assert model.flat()["leaked_images"] == 3
    assert result.to_dict()["models"][0]["leakage"]["counts"] == {"train": 2, "val": 1}
    warnings = [m for m, warning in notes.notes if warning and "busy" not in m]  # the machine's load: not this test's
    assert len(warnings) == 1 and "3 of 4 evaluated images" in warnings[0]


def test_predict_warns_about_images_a_checkpoint_was_trained_on(probe_run: TrainResult, tmp_path: Path) -> None:
    from cnnlab.prediction import predict

    copies = _evaluated(probe_run, tmp_path / "eval")
    notes = _Notes()
    result = predict([tmp_path / "eval"], model=probe_run.best_path, runtime=RuntimeOptions(workers=0), progress=notes)
    assert len(result.predictions) == 4
    assert result.leakage is not None and result.leakage["overlapping"] == 3
    assert result.to_dict()["leakage"]["overlapping"] == 3
    assert [w for m, w in notes.notes if "3 of 4 evaluated images" in m] == [True]
    clean = predict([tmp_path / "eval" / "red" / "new.png"], model=probe_run.best_path, runtime=RuntimeOptions(workers=0), progress=notes)
    assert clean.leakage is not None and clean.leakage["overlapping"] == 0
    assert predict(copies[:1], model="efficientnet_lite0", runtime=RuntimeOptions(workers=0)).leakage is None  # not a checkpoint


def test_every_train_output_is_written_safely(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """data_split.csv keeps a file name that is not UTF-8 as its bytes; a write that fails (here a full disk
    while the curves are saved) is an OutputError with its cause, not an OSError traceback."""
    import errno
    import os

    from matplotlib.figure import Figure

    from cnnlab.errors import OutputError

    data = make_colours(tmp_path / "data", per_class=4)
    odd = os.fsencode(data / "red") + b"/caf\xe9.png"
    with open(odd, "wb") as fh:
        fh.write((data / "red" / "00.png").read_bytes())
    config = TrainConfig(data=str(data), out=str(tmp_path / "run"), model="squeezenet1_1", random_weights=True,
                         image_size=32, workers=0, freeze=True)
    result = fine_tune(config)
    assert b"caf\xe9.png" in (result.out / "data_split.csv").read_bytes()

    def disk_full(self: Figure, *args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    config.out, config.overwrite = str(tmp_path / "run2"), False
    with pytest.raises(OutputError, match="disk holding .*curves.png is full"):
        fine_tune(config)
    assert not list((tmp_path / "run2").glob(".curves.png.*.tmp"))
