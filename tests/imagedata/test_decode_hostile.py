"""Hostile inputs for reading, predicting, splitting and exporting: no wrong answer, no traceback, nothing lost.

Each test is the regression test of one defect or decision of issue 14 (named in its docstring).
Anything that could block (a FIFO) runs in a thread with a time limit and is unblocked afterwards;
anything that could read without end (/dev/zero) runs in a subprocess with a memory limit.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli import app
from cnnlab.errors import CnnlabError, DatasetError, ImageDecodeError, WeightsIntegrityError
from cnnlab.imagedata.datasets import expand_paths, scan_dataset
from cnnlab.imagedata.decode import decode_image
from cnnlab.options import ModelSource, RuntimeOptions
from tests.helpers.images import make_image

runner = CliRunner()
NON_UTF8 = os.fsdecode(b"caf\xe9")  # a Latin-1 name: valid on Linux, not valid UTF-8


def run_with_time_limit(func: Callable[[], Any], fifo: Path, seconds: float = 10.0) -> Any:
    """Run ``func`` in a thread; if it is still blocked after ``seconds`` (reading ``fifo``), unblock it and fail."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for _ in range(50):  # a writer that opens and closes gives the blocked reader its end of file
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            thread.join(0.2)
            if not thread.is_alive():
                break
        pytest.fail(f"blocked for more than {seconds} s on the FIFO {fifo}")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# -- defect 1: a symlink loop is walked once -------------------------------------------------


def test_symlink_loop_in_a_class_folder_counts_each_file_once(tmp_path: Path) -> None:
    """Defect 1: `ln -s .. data/cat/loop` made 2 images look like 82 (and put dog images under cat)."""
    data = tmp_path / "data"
    make_image(data / "cat" / "1.png")
    make_image(data / "dog" / "2.png", color=(10, 10, 200))
    (data / "cat" / "loop").symlink_to("..")
    (data / "dog" / "self").symlink_to(".")
    ds = scan_dataset(data)
    assert [(p.name, ds.classes[t]) for p, t in zip(ds.paths, ds.targets)] == [("1.png", "cat"), ("2.png", "dog")]
    loops = sorted(Path(s.path).name for s in ds.skipped if s.reason == "symlink-loop")
    assert loops == ["loop", "self"]
    found, skipped = expand_paths([data])
    assert sorted(p.name for p in found) == ["1.png", "2.png"]
    assert {s.reason for s in skipped} == {"symlink-loop"}
    from cnnlab.imagedata.splits import make_split

    rows = make_split(data, val=0.0, test=0.5, near_dup_threshold=-1).rows
    assert sorted(r.path for r in rows) == ["cat/1.png", "dog/2.png"]


def test_a_file_linked_into_two_classes_is_an_error_naming_both(tmp_path: Path) -> None:
    """Defect 1/7: one real file with two labels must not be scored twice."""
    data = tmp_path / "data"
    make_image(data / "cat" / "1.png")
    (data / "dog").mkdir()
    (data / "dog" / "also.png").symlink_to(data / "cat" / "1.png")
    with pytest.raises(DatasetError, match=r"class 'cat'.*class 'dog'"):
        scan_dataset(data)


# -- defect 2: a 140-byte image must not need gigabytes ----------------------------------------


def test_extreme_aspect_ratio_is_cut_before_resizing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 2: a 20000x1 PNG made a 5-gigapixel intermediate (6.3 GB) in predict."""
    from cnnlab.models.registry import get_spec

    strip = tmp_path / "strip.png"
    Image.new("L", (20000, 1), 128).save(strip)
    assert strip.stat().st_size < 1000
    original_resize = Image.Image.resize
    asked: list[tuple[int, int]] = []

    def bounded_resize(self: Image.Image, size: tuple[int, int], *args: Any, **kwargs: Any) -> Image.Image:
        asked.append(tuple(size))  # type: ignore[arg-type]
        assert size[0] * size[1] <= 4 * 256 * 256 * 4, f"resize to {size} would need {size[0] * size[1]:,} pixels"
        return original_resize(self, size, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", bounded_resize)
    pp = get_spec("resnet50").preprocessing
    tensor = pp.load(strip)
    assert tuple(tensor.shape) == (3, pp.crop_size, pp.crop_size) and asked
    tall = pp.resize_and_crop(Image.new("RGB", (1, 20000)))
    assert tall.size == (pp.crop_size, pp.crop_size)


def test_ordinary_photos_are_not_cut(real_photos: dict[str, Path]) -> None:
    """Defect 2 guard: the cut only applies past 4:1, so torchvision's numbers are unchanged for photos."""
    from cnnlab.models.registry import get_spec

    pp = get_spec("resnet50").preprocessing
    img = Image.open(real_photos["cat"]).convert("RGB")
    wide = img.resize((img.width * 2, img.height))  # 451x300 -> 902x300, 3:1: below the cut
    size, crop = pp.resize_size, pp.crop_size
    direct = wide.resize((int(size * wide.width / wide.height), size), Image.Resampling.BILINEAR)
    left = round((direct.width - crop) / 2.0)
    top = round((direct.height - crop) / 2.0)
    assert pp.resize_and_crop(wide).tobytes() == direct.crop((left, top, left + crop, top + crop)).tobytes()


# -- defect 9: special files -------------------------------------------------------------------


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Defect 9: a FIFO hung predict, bench and collect (reading waits for a writer for ever)."""
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    with pytest.raises(ImageDecodeError) as info:
        run_with_time_limit(lambda: decode_image(fifo), fifo)
    assert info.value.reason == "not-a-file"
    make_image(tmp_path / "cls" / "ok.png")
    os.mkfifo(tmp_path / "cls" / "pipe.jpg")
    ds = scan_dataset(tmp_path)
    assert [p.name for p in ds.paths] == ["ok.png"]
    assert [(Path(s.path).name, s.reason) for s in ds.skipped] == [("pipe.jpg", "not-a-file")]


@pytest.fixture(scope="module")
def lite0() -> Any:
    from cnnlab.models.load import load_torch

    return load_torch("efficientnet_lite0", RuntimeOptions(device="cpu"))


def test_predict_goes_on_past_a_fifo(tmp_path: Path, lite0: Any) -> None:
    """Defect 9: predict on a folder holding a FIFO finishes, predicts the rest, reports the FIFO."""
    from cnnlab.prediction import predict

    folder = tmp_path / "in"
    make_image(folder / "ok.png", (80, 60))
    fifo = folder / "pipe.jpg"
    os.mkfifo(fifo)
    result = run_with_time_limit(lambda: predict([folder], model=lite0, runtime=RuntimeOptions(workers=0)), fifo, 30)
    assert [Path(p.path).name for p in result.predictions] == ["ok.png"]
    assert {(Path(s.path).name, s.reason) for s in result.skipped} == {("pipe.jpg", "not-a-file")}


_DEV_ZERO_CHECK = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))
    from cnnlab.collect.download import read_local_file
    from cnnlab.errors import ImageDecodeError
    from cnnlab.imagedata.decode import decode_image
    try:
        decode_image(sys.argv[1])
    except ImageDecodeError as exc:
        print("decode", exc.reason)
    result = read_local_file(sys.argv[1], 20_000_000)
    print("import", result.status, result.reason)
""")


def test_symlink_to_dev_zero_is_not_read(tmp_path: Path) -> None:
    """Defect 9: a link to /dev/zero was read without limit (--max-bytes trusted the reported size 0)."""
    link = tmp_path / "cls" / "zero.jpg"
    link.parent.mkdir()
    link.symlink_to("/dev/zero")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run([sys.executable, "-c", _DEV_ZERO_CHECK, str(link)], capture_output=True, text=True,
                          timeout=60, env=env)  # the memory limit ends a regression in about a second
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split("\n")[:2] == ["decode not-a-file", "import rejected not-a-file"]
    found, skipped = expand_paths([tmp_path])
    assert found == [] and [s.reason for s in skipped] == ["not-a-file"]
    assert [s.reason for s in scan_dataset(tmp_path).skipped] == ["not-a-file"]


# -- defect 10: camera names -------------------------------------------------------------------


def test_camera_names_are_images_and_only_real_junk_is_skipped(tmp_path: Path) -> None:
    """Defect 10: _DSC0001.JPG and _MG_1234.png were silently ignored (a class then looked empty)."""
    make_image(tmp_path / "cat" / "_DSC0001.JPG")
    make_image(tmp_path / "cat" / "_MG_1234.png")
    make_image(tmp_path / "cat" / "_sub" / "x.png")
    make_image(tmp_path / "cat" / ".hidden.png")
    make_image(tmp_path / "cat" / "__MACOSX" / "._DSC0001.JPG")
    (tmp_path / "cat" / "Thumbs.db").write_bytes(b"junk")
    make_image(tmp_path / "_trash" / "old.png")  # not a class (documented)
    ds = scan_dataset(tmp_path)
    assert ds.classes == ["cat"] and not ds.empty_classes
    assert sorted(p.name for p in ds.paths) == ["_DSC0001.JPG", "_MG_1234.png", "x.png"]
    found, _ = expand_paths([tmp_path / "cat"])
    assert sorted(p.name for p in found) == ["_DSC0001.JPG", "_MG_1234.png", "x.png"]


# -- unreadable subfolders are reported ----------------------------------------------------------


def test_an_unreadable_subfolder_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision: a folder that cannot be read is a skipped record, not silence (root ignores modes: simulated)."""
    make_image(tmp_path / "cat" / "1.png")
    make_image(tmp_path / "cat" / "locked" / "2.png")
    real_scandir = os.scandir

    def scandir(path: Any = ".") -> Any:
        if isinstance(path, (str, os.PathLike)) and Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    ds = scan_dataset(tmp_path)
    assert [p.name for p in ds.paths] == ["1.png"]
    assert [(Path(s.path).name, s.reason) for s in ds.skipped] == [("locked", "unreadable")]
    _, skipped = expand_paths([tmp_path])
    assert "Permission denied" in skipped[0].detail


# -- defects 7 and 11: manifests -----------------------------------------------------------------


def test_duplicate_manifest_rows_count_once_and_conflicts_name_the_rows(tmp_path: Path) -> None:
    """Defect 7: one file on 4 rows was scored as 4 images (5 with a row of another label)."""
    make_image(tmp_path / "imgs" / "1.jpg")
    make_image(tmp_path / "imgs" / "2.jpg")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "imgs" / "1.jpg")
    rows = ["imgs/1.jpg,cat", "./imgs/1.jpg,cat", f"{tmp_path}/imgs/1.jpg,cat", "link.jpg,cat", "imgs/2.jpg,dog"]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = scan_dataset(tmp_path / "m.csv")
    assert len(ds) == 2 and ds.class_counts() == {"cat": 1, "dog": 1}
    assert [s.reason for s in ds.skipped] == ["duplicate"] * 3
    (tmp_path / "bad.csv").write_text("path,label\n" + "\n".join([*rows, "imgs/1.jpg,dog"]) + "\n")
    with pytest.raises(DatasetError, match=r"lines 2 and 7 give .*1.jpg two labels \('cat' and 'dog'\)"):
        scan_dataset(tmp_path / "bad.csv")


def test_manifest_with_extra_fields_bom_and_split_names(tmp_path: Path) -> None:
    """Defect 11: extra fields crashed (TypeError); a BOM was refused; `Val`/`tset` rows were dropped silently."""
    make_image(tmp_path / "a.jpg")
    make_image(tmp_path / "b.jpg")
    (tmp_path / "extra.csv").write_text("path,label\na.jpg,cat,oops\n")
    with pytest.raises(DatasetError, match=r"extra.csv:2: this row has 3 fields but the header has 2"):
        scan_dataset(tmp_path / "extra.csv")
    (tmp_path / "excel.csv").write_bytes("path,label,split\r\na.jpg,cat,train\r\nb.jpg,dog,Val\r\n".encode("utf-8-sig"))
    assert len(scan_dataset(tmp_path / "excel.csv")) == 2
    assert [p.name for p in scan_dataset(tmp_path / "excel.csv", split="val").paths] == ["b.jpg"]
    assert [p.name for p in scan_dataset(tmp_path / "excel.csv", split="VAL").paths] == ["b.jpg"]
    (tmp_path / "typo.csv").write_text("path,label,split\na.jpg,cat,train\nb.jpg,dog,tset\n")
    with pytest.raises(DatasetError, match=r"typo.csv:3: split 'tset' is not one of train, val, test"):
        scan_dataset(tmp_path / "typo.csv", split="train")
    (tmp_path / "rows.jsonl").write_text('{"path": "a.jpg", "label": "cat"}\n[1, 2]\n')
    with pytest.raises(DatasetError, match=r"rows.jsonl:2: not a JSON object"):
        scan_dataset(tmp_path / "rows.jsonl")


def test_manifest_paths_outside_its_folder_are_allowed(tmp_path: Path) -> None:
    """Decision (documented in scan_dataset): a manifest may list files outside its folder; only regular files are read."""
    make_image(tmp_path / "elsewhere" / "x.jpg")
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "m.csv").write_text(f"path,label\n../elsewhere/x.jpg,cat\n{tmp_path}/elsewhere/x.jpg,cat\n")
    ds = scan_dataset(tmp_path / "lists" / "m.csv")
    assert len(ds) == 1 and ds.skipped[0].reason == "duplicate"


# -- defect 5: names that are not UTF-8 -----------------------------------------------------------


def test_split_writes_and_reads_back_non_utf8_names(tmp_path: Path) -> None:
    """Defect 5: split died with UnicodeEncodeError after all the work."""
    from cnnlab.imagedata.splits import make_split

    data = tmp_path / "data"
    for i in range(4):
        make_image(data / "cat" / f"{NON_UTF8}{i}.png", color=(40 * i, 10, 10))
        make_image(data / NON_UTF8 / f"{i}.png", color=(10, 40 * i, 10))
    result = make_split(data, val=0.25, test=0.25, near_dup_threshold=-1)
    raw = (data / "split.csv").read_bytes()
    assert b"caf\xe9" in raw  # the names' own bytes
    back = [p for s in ("train", "val", "test") for p in scan_dataset(data, split=s).paths]
    assert len(back) == 8 and all(p.is_file() for p in back)
    assert len(result.rows) == 8


@pytest.mark.slow
def test_predict_csv_with_non_utf8_names_on_a_strict_terminal(tmp_path: Path) -> None:
    """Defect 5: predict printed its table or CSV only after all the work, and died on such a name."""
    make_image(tmp_path / f"{NON_UTF8}.png", (40, 40))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-m", "cnnlab", "predict", ".", "-q", "-k", "1"]
    as_csv = subprocess.run([*command, "--csv"], capture_output=True, env=env, timeout=300, cwd=tmp_path)
    assert as_csv.returncode == 0, as_csv.stderr.decode(errors="replace")[-2000:]
    assert b"\ncaf\xe9.png,1," in as_csv.stdout  # the file's own name
    table = subprocess.run(command, capture_output=True, env=env, timeout=300, cwd=tmp_path)
    assert table.returncode == 0 and b"caf\\xe9.png" in table.stdout, table.stderr.decode(errors="replace")[-2000:]


# -- defect 8: garbage weights files --------------------------------------------------------------

GARBAGE = {
    "memo": b"\x80\x02]q\x00h\x65.",  # KeyError: 101 inside torch.load
    "stack": b"\x80\x02a.",  # IndexError: pop from empty list
    "short": b"\x80\x02J\x00.",  # struct.error
}


@pytest.mark.parametrize("payload", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_pt_files_are_errors_not_tracebacks(tmp_path: Path, payload: bytes) -> None:
    """Defect 8: damaged .pt files gave IndexError/KeyError tracebacks in predict, export, --weights, bench."""
    from cnnlab.models.checkpoint import read_checkpoint
    from cnnlab.models.weights import load_state_dict

    bad = tmp_path / "bad.pt"
    bad.write_bytes(payload)
    with pytest.raises(CnnlabError):
        load_state_dict(bad)
    with pytest.raises(CnnlabError):
        read_checkpoint(bad)
    img = make_image(tmp_path / "a.png")
    for args in (["predict", str(img), "--model", "squeezenet1_1", "--weights", str(bad), "-q"],
                 ["predict", str(img), "--model", str(bad), "-q"],
                 ["export", str(bad), "--format", "torchscript"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 3, (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)


def test_architecture_mismatch_is_summarised(tmp_path: Path) -> None:
    """Decision: a key dump of 20 KB became counts and a few names."""
    from cnnlab.models.load import load_torch
    from cnnlab.models.registry import get_spec

    path = tmp_path / "wrong.pth"
    torch.save(get_spec("resnet18").build().state_dict(), path)
    with pytest.raises(WeightsIntegrityError) as info:
        load_torch(ModelSource(name="squeezenet1_1", weights=path))
    message = str(info.value)
    assert len(message) < 700, len(message)
    assert "missing keys" in message and "unexpected keys" in message and "more" in message


# -- checkpoints ---------------------------------------------------------------------------------


def _tiny_checkpoint(path: Path, **preprocessing: Any) -> Path:
    from cnnlab.models.checkpoint import make_checkpoint, replace_head, save_checkpoint
    from cnnlab.models.registry import get_spec

    base = get_spec("squeezenet1_1")
    module = base.build(None)
    head = replace_head(module, 2)
    ckpt = make_checkpoint(arch=base.name, head=head, classes=["a", "b"], preprocessing=base.preprocessing,
                           state_dict=module.state_dict(), train_args={}, metrics={})
    ckpt["preprocessing"] = {**base.preprocessing.to_dict(), **preprocessing}  # as if edited by hand
    return save_checkpoint(ckpt, path)


@pytest.mark.parametrize("edit", [{"crop_size": 100_000}, {"mean": [float("nan"), 0.5, 0.5]},
                                  {"std": [0.2, 0.0, 0.2]}, {"interpolation": "magic"}, {"resize_size": -3}],
                         ids=["huge-crop", "nan-mean", "zero-std", "interpolation", "negative-resize"])
def test_hand_edited_checkpoint_preprocessing_is_refused(tmp_path: Path, edit: dict[str, Any]) -> None:
    """Decision: impossible preprocessing (a 100000-pixel crop, a NaN mean) is refused when the checkpoint is read."""
    from cnnlab.models.load import load_torch

    path = _tiny_checkpoint(tmp_path / "best.pt", **edit)
    with pytest.raises(WeightsIntegrityError, match="preprocessing"):
        load_torch(str(path), RuntimeOptions(device="cpu"))


def test_save_checkpoint_cleans_stale_temp_files_and_fsyncs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Decision: a kill during save left `.best.pt.PID.tmp` behind; they are removed, and data is fsync'd before the rename."""
    from cnnlab.models.checkpoint import save_checkpoint

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".best.pt.{dead.pid}.tmp"
    stale.write_bytes(b"half a checkpoint")
    alive = tmp_path / f".best.pt.{os.getppid()}.tmp"  # a running process: maybe saving right now
    alive.write_bytes(b"in progress")
    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    save_checkpoint({"x": torch.zeros(2)}, tmp_path / "best.pt")
    assert not stale.exists() and alive.exists()
    assert "fsync" in calls and calls.index("fsync") < calls.index("replace")
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["x"], torch.zeros(2))


# -- defect 13: environment errors ----------------------------------------------------------------


def test_unsupported_devices_are_usage_errors(tmp_path: Path) -> None:
    """Defect 13: --device mps|meta. The CLI refuses the strings; the library refused no torch.device."""
    from cnnlab.errors import UsageError
    from cnnlab.models.load import load_torch

    for device in ("meta", "mps"):
        with pytest.raises(UsageError, match="not supported|unknown device"):
            load_torch("efficientnet_lite0", RuntimeOptions(device=torch.device(device)))
    img = make_image(tmp_path / "a.png")
    for device in ("mps", "meta"):
        result = runner.invoke(app, ["predict", str(img), "--device", device, "-q"])
        assert result.exit_code == 2 and "Traceback" not in result.output


def test_split_of_a_file(tmp_path: Path) -> None:
    """Defect 13: split given a file read it as a manifest ("not a UTF-8 text manifest")."""
    make_image(tmp_path / "data" / "cat" / "1.png")
    result = runner.invoke(app, ["split", str(tmp_path / "data" / "cat" / "1.png")])
    assert result.exit_code == 2 and "is a file, not a dataset folder" in result.output, result.output


def test_split_on_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 13: a disk that fills while split.csv is written: one sentence, exit 1, the old file intact."""
    make_image(tmp_path / "data" / "cat" / "1.png")
    make_image(tmp_path / "data" / "dog" / "2.png")
    (tmp_path / "data" / "split.csv").write_text("path,label,split\nold,row,train\n")

    def full(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    result = runner.invoke(app, ["split", str(tmp_path / "data"), "--near-dup-threshold", "-1"])
    assert result.exit_code == 1, result.output
    assert "is full; the previous split.csv is intact" in result.output and "Traceback" not in result.output
    assert (tmp_path / "data" / "split.csv").read_text() == "path,label,split\nold,row,train\n"
    assert [p.name for p in (tmp_path / "data").iterdir() if p.name.endswith(".tmp")] == []


def test_export_out_that_is_a_folder_or_under_a_file(tmp_path: Path) -> None:
    """Defect 13: export --out pointing at a folder, or below a file."""
    folder = tmp_path / "exports"
    folder.mkdir()
    result = runner.invoke(app, ["export", "efficientnet_lite0", "--format", "torchscript", "--out", str(folder)])
    assert result.exit_code == 2 and "is a folder" in result.output, result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["export", "efficientnet_lite0", "--format", "torchscript",
                                 "--out", str(blocker / "m.pt")])
    assert result.exit_code == 2 and "is a file, not a folder" in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_weights_fetch_dest_that_is_a_file(tmp_path: Path) -> None:
    """Defect 13: `weights fetch --dest FILE` said "[Errno 17] File exists" per model."""
    dest = tmp_path / "dest"
    dest.write_text("x")
    result = runner.invoke(app, ["weights", "fetch", "efficientnet_lite0", "resnet18", "--dest", str(dest), "-q"])
    assert result.exit_code == 2 and result.output.count("is a file") == 1, result.output


# -- model names -----------------------------------------------------------------------------------


def test_model_names_are_case_insensitive_and_typos_get_suggestions() -> None:
    """Decision: `ResNet50` is resnet50; `rsenet50` suggests resnet50 (difflib), not "see cnnlab models"."""
    from cnnlab.errors import UnknownModelError
    from cnnlab.models.registry import get_spec

    assert get_spec("ResNet50").name == "resnet50.IMAGENET1K_V2"
    assert get_spec("RESNET50.imagenet1k_v1").name == "resnet50.IMAGENET1K_V1"
    with pytest.raises(UnknownModelError, match=r"Did you mean: resnet50"):
        get_spec("rsenet50")
    with pytest.raises(UnknownModelError, match=r"mobilenet_v2"):
        get_spec("mobilenetv2")
    result = runner.invoke(app, ["weights", "where", "EfficientNet_Lite0", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["model"].startswith("efficientnet_lite0")


def test_a_big_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """Defect 9: reads are bounded; a file over the limit is not read whole."""
    big = tmp_path / "big.jpg"
    with big.open("wb") as fh:
        fh.truncate(3_000_000)  # sparse: no disk used
    started = time.monotonic()
    with pytest.raises(ImageDecodeError) as info:
        decode_image(big, max_bytes=1_000_000)
    assert info.value.reason == "too-large" and time.monotonic() - started < 1


def test_a_full_disk_during_a_checkpoint_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 13 (the checkpoint writer train uses): a full disk was torch's "unexpected pos"; now one
    sentence, no temporary file left, the previous checkpoint intact."""
    from cnnlab.errors import OutputError
    from cnnlab.models.checkpoint import save_checkpoint

    target = save_checkpoint({"x": torch.zeros(4)}, tmp_path / "best.pt")
    real_open = Path.open

    class FillsUp:
        def __init__(self, fh: Any) -> None:
            self.fh, self.written = fh, 0

        def write(self, data: Any) -> int:
            self.written += len(data)
            if self.written > 100:
                raise OSError(errno.ENOSPC, "No space left on device")
            return int(self.fh.write(data))

        def __getattr__(self, name: str) -> Any:
            return getattr(self.fh, name)

        def __enter__(self) -> FillsUp:
            return self

        def __exit__(self, *exc: object) -> None:
            self.fh.close()

    def open_on_a_full_disk(self: Path, *args: Any, **kwargs: Any) -> Any:
        fh = real_open(self, *args, **kwargs)
        return FillsUp(fh) if self.name.endswith(".tmp") else fh

    monkeypatch.setattr(Path, "open", open_on_a_full_disk)
    with pytest.raises(OutputError, match="best.pt is full; the previous best.pt is intact"):
        save_checkpoint({"x": torch.ones(1000)}, target)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert torch.equal(torch.load(target, weights_only=True)["x"], torch.zeros(4))
