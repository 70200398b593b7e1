"""The folder lock of train, bench and collect: it ends with the process that took it."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from cnnlab.errors import OutputError, UsageError
from cnnlab.outputs import FolderLock, OutputFolder


def test_a_second_lock_on_a_held_folder_is_refused(tmp_path: Path) -> None:
    with FolderLock(tmp_path), pytest.raises(OutputError, match="another run is writing"), \
            FolderLock(tmp_path, holder="another run"):
        pass


def _signal_then_sleep(ready: Any) -> None:
    ready.set()  # the fork hooks have run by now
    time.sleep(60)


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path: Path) -> None:
    """DataLoader workers are forked while the run holds its lock. They shared the locked open file, so after
    a `kill -9` of the run an orphaned worker kept the folder locked (for ten minutes once) and `--resume`
    was refused."""
    fork = multiprocessing.get_context("fork")
    ready = fork.Event()
    child = None
    try:
        with FolderLock(tmp_path):
            child = fork.Process(target=_signal_then_sleep, args=(ready,), daemon=True)
            child.start()
            assert ready.wait(30)
        assert child.is_alive()
        with FolderLock(tmp_path):  # the parent let go; the living child must not hold the lock
            pass
    finally:
        if child is not None:
            child.kill()
            child.join()


# -- OutputFolder: the one rule set every job's output folder follows ---------------------------------------


def test_output_folder_refuses_a_file_and_a_path_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "results.csv").write_text("x")
    for path in (tmp_path / "results.csv", tmp_path / "results.csv" / "run1"):
        with pytest.raises(UsageError, match="a file, not a folder"):
            OutputFolder(path, "bench").check()
    assert not (tmp_path / "results.csv").is_dir()


def test_output_folder_inside_the_data_is_refused_unless_hidden(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    for path in (data, data / "cat", data / "runs" / "x"):
        with pytest.raises(UsageError, match="data folder"):
            OutputFolder(path, "bench", data=data).check()
    assert OutputFolder(data / ".cnnlab" / "bench", "bench", data=data).check() == data / ".cnnlab" / "bench"
    assert OutputFolder(tmp_path / "elsewhere", "bench", data=data).check() == tmp_path / "elsewhere"
    assert not (data / "runs").exists() and not (tmp_path / "elsewhere").exists()  # checks create nothing


def test_output_folder_holding_an_earlier_run_needs_replace_and_clears_only_its_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "predictions").mkdir(parents=True)
    (out / "results.csv").write_text("old")
    (out / "mine.txt").write_text("keep")
    folder = OutputFolder(out, "bench", run_files=("results.csv", "predictions", "results.json"))
    with pytest.raises(UsageError, match="earlier bench run .*overwrite") as refused:
        folder.check()
    assert "resume" not in str(refused.value)
    assert folder.check(replace=True) == out
    folder.clear_previous()
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_a_resumable_job_says_it_can_continue(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match=r"continue it \(resume\)"):
        OutputFolder(tmp_path, "train", run_files=("last.pt",), resumable=True).check()
    assert OutputFolder(tmp_path, "train", run_files=("last.pt",), resumable=True).check(resume=True) == tmp_path


def test_output_folder_lock_refuses_a_second_writer(tmp_path: Path) -> None:
    folder = OutputFolder(tmp_path / "out", "review")
    folder.create()
    with folder.lock(), pytest.raises(OutputError, match="another cnnlab review run"), folder.lock():
        pass


def test_what_an_interrupted_run_leaves_does_not_block_the_rerun(tmp_path: Path) -> None:
    """Issue 27: Ctrl-C during bench, then a rerun. The lock file and a dead writer's temporary file are not
    an earlier run's outputs; the rerun's atomic writes remove the temporary file."""
    from cnnlab.outputs import atomic_write

    out = tmp_path / "out"
    out.mkdir()
    (out / ".lock").write_text("")
    stale = out / ".results.json.999999.tmp"  # a pid that does not run
    stale.write_text("{half")
    folder = OutputFolder(out, "bench", run_files=("results.json", "results.csv"))
    assert folder.previous() == [] and folder.check() == out
    with folder.lock():
        atomic_write(out / "results.json", "{}")
    assert not stale.exists() and (out / "results.json").read_text() == "{}"


def test_next_to_a_manifest_is_inside_its_data(tmp_path: Path) -> None:
    """Found by review: ``bench data/split.csv --out data/res`` wrote plots that the next scan of data/ read
    as a class of images."""
    data = tmp_path / "data"
    (data / "red").mkdir(parents=True)
    (data / "red" / "1.png").write_bytes(b"x")  # a class-folder tree: a folder scan would read what lies beside
    manifest = data / "split.csv"
    manifest.write_text("path,label,split\n")
    with pytest.raises(UsageError, match="inside the data folder"):
        OutputFolder(data / "res", "bench", data=manifest).check()
    assert OutputFolder(data / ".cnnlab" / "bench", "bench", data=manifest).check() == data / ".cnnlab" / "bench"
    assert OutputFolder(tmp_path / "res", "bench", data=manifest).check() == tmp_path / "res"
    lists = tmp_path / "lists"  # a manifest among other files: the folder is no data set, its neighbours are free
    lists.mkdir()
    (lists / "m.csv").write_text("path,label\n")
    assert OutputFolder(lists / "res", "bench", data=lists / "m.csv").check() == lists / "res"


# -- data stored as records (Parquet files, tar shards, save_to_disk folders) ------------------------------------


def _photo_table(path: Path, labels: list[int]) -> Any:
    """A Parquet file of real photo tiles (skimage's cat and coffee cup) as ``datasets`` writes it; the dataset."""
    datasets = pytest.importorskip("datasets")
    from PIL import Image
    from skimage import data as sk

    from tests.helpers.images import grid_tiles, jpeg

    tiles = {0: grid_tiles(Image.fromarray(sk.chelsea()), 2, 96), 1: grid_tiles(Image.fromarray(sk.coffee()), 2, 96)}
    seen = {0: 0, 1: 0}
    images = []
    for label in labels:
        images.append({"bytes": jpeg(tiles[label][seen[label]]), "path": None})
        seen[label] += 1
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["cat", "coffee"])})
    dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    dataset.to_parquet(str(path))
    return dataset


def test_an_output_folder_beside_a_record_file_is_free_and_inside_a_folder_of_shards_is_not(tmp_path: Path) -> None:
    """Found by review: ``bench data.parquet -o runs/x`` in a folder that also held class folders was refused
    ("inside the data folder ."), though a Parquet file or a shard is read alone, never its folder."""
    import tarfile

    from tests.helpers.images import make_image

    here = tmp_path / "here"
    for label in ("cat", "dog"):  # the folder the record files lie in is also a class-folder tree
        (here / label).mkdir(parents=True)
        make_image(here / label / "1.jpg")
    with tarfile.open(here / "set.tar", "w") as tar:
        tar.add(here / "cat" / "1.jpg", "a.jpg")
    _photo_table(here / "data.parquet", [0, 1]).save_to_disk(str(tmp_path / "sv"))
    for data in (here / "set.tar", here / "data.parquet"):
        assert OutputFolder(here / "runs" / "x", "bench", data=data).check() == here / "runs" / "x"
    # a save_to_disk folder reads the files its state.json lists, nothing else written in it
    assert OutputFolder(tmp_path / "sv" / "runs", "bench", data=tmp_path / "sv").check() == tmp_path / "sv" / "runs"
    # a folder of shards holds its shards (and split folders) only: another folder would make it a class-folder tree
    shards = tmp_path / "shards"
    shards.mkdir()
    (here / "set.tar").rename(shards / "s-000000.tar")
    with pytest.raises(UsageError, match="take its folders for classes .* not shards or Parquet files"):
        OutputFolder(shards / "runs", "bench", data=shards).check()
    assert OutputFolder(shards / ".cnnlab" / "bench", "bench", data=shards).check() == shards / ".cnnlab" / "bench"


def test_bench_on_a_parquet_file_in_the_current_folder_writes_where_it_is_told(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from cnnlab.cli import app
    from cnnlab.models.registry import OFFLINE_MODEL
    from tests.helpers.images import make_image

    for label in ("cat", "coffee"):  # the current folder is also a class-folder tree
        (tmp_path / label).mkdir()
        make_image(tmp_path / label / "0.jpg")
    _photo_table(tmp_path / "data.parquet", [0, 0, 1, 1])
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, ["bench", "data.parquet", "-m", OFFLINE_MODEL, "-b", "4", "--workers", "0",
                                    "--repeats", "3", "--speed-budget", "1", "--no-plots", "-o", "runs/x", "-q"])
    assert done.exit_code == 0, done.output
    results = json.loads((tmp_path / "runs" / "x" / "results.json").read_text())
    assert results["dataset"]["images"] == 4 and results["dataset"]["classes"] == {"cat": 2, "coffee": 2}
