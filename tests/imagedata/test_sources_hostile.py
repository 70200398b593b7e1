"""Datasets stored as records that are odd, broken or hostile: each bad sample is skipped and named, a set that cannot
be read as meant is refused in one line, and nothing is dropped or mixed silently."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from cnnlab.errors import DatasetError, ImageDecodeError
from cnnlab.imagedata.datasets import expand_paths, scan_dataset
from cnnlab.imagedata.decode import read_regular_file
from cnnlab.models.registry import OFFLINE_MODEL
from tests.helpers.images import grid_tiles, jpeg

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

CLASSES = ["cat", "coffee"]


@pytest.fixture(scope="module")
def photos() -> dict[str, list[bytes]]:
    """Four real 96-pixel JPEG tiles of each of two photographs (skimage's cat and coffee cup)."""
    from skimage import data as sk

    return {"cat": [jpeg(t) for t in grid_tiles(Image.fromarray(sk.chelsea()), 4, 96)],
            "coffee": [jpeg(t) for t in grid_tiles(Image.fromarray(sk.coffee()), 4, 96)]}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _shard(path: Path, samples: list[tuple[str, bytes, int | str | None]]) -> Path:
    """A tar shard of (key, image bytes, label) samples, written member by member as ``webdataset`` writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for key, data, label in samples:
            _add(tar, f"{key}.jpg", data)
            if label is not None:
                _add(tar, f"{key}.cls", str(label).encode())
    return path


def _keys(paths: list[Path]) -> list[str]:
    return [str(p).split(".tar#", 1)[1] for p in paths]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- class names beside the shards (findings 1 and 2) -------------------------------------------------------------


@pytest.mark.parametrize(("names", "said"), [
    ({"cat": 5_000_000}, "index 5000000"),  # would have built five million names
    ({"cat": "dog"}, "mapping of names to indices"),
    ({"cat": -3, "dog": 1}, "index -3"),
    ({"cat": 0, "dog": 0, "fish": 2}, "index 0 twice"),
    ({"0": "cat", "2": "coffee"}, "index 2"),
    (["cat", "cat"], "names the class 'cat' twice"),
    ("cat", "must hold a list of class names"),
    ([1, 2], "something other than class names"),
])
def test_a_classes_json_that_does_not_number_its_classes_0_to_n_minus_1_is_refused(
        tmp_path: Path, photos: dict[str, list[bytes]], names: Any, said: str) -> None:
    _shard(tmp_path / "s-000000.tar", [("a", photos["cat"][0], 0), ("b", photos["coffee"][0], 1)])
    (tmp_path / "classes.json").write_text(json.dumps(names))
    started = time.monotonic()
    with pytest.raises(DatasetError, match=f"{tmp_path / 'classes.json'}.*{said}"):
        scan_dataset(tmp_path)
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("names", [["cat", "coffee"], {"cat": 0, "coffee": 1}, {"coffee": 1, "cat": 0},
                                   {"1": "coffee", "0": "cat"}])
def test_every_form_of_classes_json_names_the_classes(tmp_path: Path, photos: dict[str, list[bytes]],
                                                     names: Any) -> None:
    _shard(tmp_path / "s-000000.tar", [("a", photos["cat"][0], 0), ("b", photos["coffee"][0], 1)])
    (tmp_path / "classes.json").write_text(json.dumps(names))
    found = scan_dataset(tmp_path)
    assert found.classes == CLASSES and found.targets == [0, 1]


def test_classes_txt_and_classes_json_that_disagree_are_refused(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    _shard(tmp_path / "s-000000.tar", [("a", photos["cat"][0], 0), ("b", photos["coffee"][0], 1)])
    (tmp_path / "classes.txt").write_text("cat\ncoffee\n")
    (tmp_path / "classes.json").write_text(json.dumps(["coffee", "cat"]))
    with pytest.raises(DatasetError, match="classes.txt and .*classes.json name different classes .*class 0 is 'cat' "
                                           "in one and 'coffee' in the other"):
        scan_dataset(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps({"cat": 0, "coffee": 1}))  # the same names: fine
    assert scan_dataset(tmp_path).classes == CLASSES


# -- what a folder is (findings 3 and 6) ----------------------------------------------------------------------------


def test_a_folder_of_images_with_a_stray_archive_is_refused_and_the_ways_it_names_work(
        tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.jpg").write_bytes(photos["cat"][i])
    _shard(flat / "backup.tar", [("a", photos["coffee"][0], 1)])
    for read in (lambda: scan_dataset(flat), lambda: expand_paths([flat])):  # bench/train/review, and predict
        with pytest.raises(DatasetError, match=rf"{flat} holds image files \(e.g. .*\.jpg\) beside WebDataset shards "
                                               rf"\(e.g. {flat}/backup.tar\).*'{flat}/\*\.tar'.*'{flat}/\*\.jpg'"):
            read()
    images, skipped = expand_paths([f"{flat}/*.jpg"])
    assert len(images) == 3 and not skipped
    assert _keys(scan_dataset(f"{flat}/*.tar").paths) == ["a"]
    # a folder of Parquet files with loose images is refused the same way
    (flat / "backup.tar").unlink()
    datasets.Dataset.from_dict({"image": [{"bytes": photos["cat"][3], "path": None}], "label": [0]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.ClassLabel(names=CLASSES)})
                               ).to_parquet(str(flat / "t.parquet"))
    with pytest.raises(DatasetError, match=r"beside Parquet files .*'.*/\*\.parquet'"):
        scan_dataset(flat)


def test_shards_in_split_folders_are_read_by_split_like_parquet(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    from cnnlab.imagedata.sources import dataset_splits
    from cnnlab.train.data import prepare_data

    sp = tmp_path / "sp"
    for split, n in (("train", 3), ("validation", 1)):
        _shard(sp / split / "0.tar", [(f"{c}{i}", photos[c][i], k) for k, c in enumerate(CLASSES) for i in range(n)])
        (sp / split / "classes.txt").write_text("cat\ncoffee\n")
    assert dataset_splits(sp) == ["train", "validation"]
    val = scan_dataset(sp, split="val")
    assert val.classes == CLASSES and _keys(val.paths) == ["cat0", "coffee0"] and val.targets == [0, 1]
    assert len(scan_dataset(sp, split="train")) == 6
    with pytest.raises(DatasetError, match=f"{sp} has splits train, validation: choose one \\(split\\), or read one "
                                           f"split on its own as {sp}/train or {sp}/validation"):
        scan_dataset(sp)
    assert _keys(scan_dataset(sp / "validation").paths) == ["cat0", "coffee0"]  # the form the error names
    splits = prepare_data(str(sp), val_fraction=0.25)  # train takes the set's own splits
    assert splits.val is not None and len(splits.train) == 6 and len(splits.val) == 2
    # class names may also lie once above the split folders
    for split in ("train", "validation"):
        (sp / split / "classes.txt").unlink()
    (sp / "classes.txt").write_text("cat\ncoffee\n")
    assert scan_dataset(sp, split="val").classes == CLASSES


# -- choosing a split where no split can be given: predict, review (finding 7) -------------------------------------


def test_a_dataset_with_splits_names_how_to_read_one_split_and_that_way_works(
        tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": b, "path": None} for b in photos["cat"][:2] + photos["coffee"][:2]],
            "label": [0, 0, 1, 1]}
    ds = datasets.Dataset.from_dict(rows, features=features)
    datasets.DatasetDict({"train": ds, "validation": ds.select([0, 2]).flatten_indices()}).save_to_disk(
        str(tmp_path / "saved"))
    with pytest.raises(DatasetError, match=f"choose one \\(split\\), or read one split on its own as "
                                           f"{tmp_path}/saved/train or {tmp_path}/saved/validation"):
        expand_paths([tmp_path / "saved"])  # what predict reads
    images, _ = expand_paths([tmp_path / "saved" / "validation"])
    assert [read_regular_file(p) for p in images] == [photos["cat"][0], photos["coffee"][0]]
    # Parquet files named by split: a glob of exactly one split's files
    (tmp_path / "pq").mkdir()
    ds.to_parquet(str(tmp_path / "pq" / "train-00000-of-00001.parquet"))
    ds.select([1, 3]).flatten_indices().to_parquet(str(tmp_path / "pq" / "validation-00000-of-00001.parquet"))
    with pytest.raises(DatasetError, match=f"read one split on its own as '{tmp_path}/pq/train-\\*\\.parquet' or "
                                           f"'{tmp_path}/pq/validation-\\*\\.parquet'"
                       ) as refused:
        scan_dataset(tmp_path / "pq")
    pattern = str(refused.value).rsplit("'", 2)[-2]
    found = scan_dataset(pattern)
    assert [read_regular_file(p) for p in found.paths] == [photos["cat"][1], photos["coffee"][1]]


def test_a_local_dataset_named_hf_names_its_splits_and_loads_without_progress_bars(
        tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    """``hf:/folder`` goes through ``datasets.load_dataset``: its split is named ``hf:/folder/SPLIT``, which loads;
    datasets' own progress bars ("Generating train split") stay off while cnnlab loads, and are on again after."""
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": b, "path": None} for b in photos["cat"][:2] + photos["coffee"][:2]],
            "label": [0, 0, 1, 1]}
    (tmp_path / "repo" / "data").mkdir(parents=True)
    ds = datasets.Dataset.from_dict(rows, features=features)
    for split in ("train", "validation"):
        ds.to_parquet(str(tmp_path / "repo" / "data" / f"{split}-00000-of-00001.parquet"))
    code = ("import sys; from cnnlab.errors import DatasetError; from cnnlab.imagedata.datasets import scan_dataset\n"
            "from datasets.utils.tqdm import are_progress_bars_disabled\n"
            "try:\n    scan_dataset(sys.argv[1])\nexcept DatasetError as exc:\n    print(exc)\n"
            "found = scan_dataset(sys.argv[1] + '/validation')\n"
            "print(len(found), found.classes, are_progress_bars_disabled())")
    env = {**os.environ, "HF_HOME": str(tmp_path / "home"), "HF_DATASETS_CACHE": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    env.pop("HF_DATASETS_DISABLE_PROGRESS_BARS", None)
    done = subprocess.run([sys.executable, "-c", code, f"hf:{tmp_path / 'repo'}"], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    refusal, result = done.stdout.strip().splitlines()
    assert refusal.endswith(f"or read one split on its own as hf:{tmp_path}/repo/train or hf:{tmp_path}/repo/validation")
    assert result == "4 ['cat', 'coffee'] False"
    assert "Generating" not in done.stderr and "%|" not in done.stderr, done.stderr


# -- samples of a shard (findings 4, 8 and 10) ----------------------------------------------------------------------


def test_a_key_repeated_in_a_shard_keeps_the_first_sample_whole(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "dup.jpg", photos["cat"][0])
        _add(tar, "dup.cls", b"0")
        _add(tar, "other.jpg", photos["coffee"][1])
        _add(tar, "other.cls", b"1")
        _add(tar, "dup.jpg", photos["coffee"][0])  # a second sample with the same key
        _add(tar, "dup.cls", b"1")
    (tmp_path / "classes.txt").write_text("cat\ncoffee\n")
    found = scan_dataset(tmp_path)
    assert _keys(found.paths) == ["dup", "other"] and found.targets == [0, 1]
    assert read_regular_file(found.paths[0]) == photos["cat"][0]  # the first image, with its own label
    assert [(s.path, s.reason) for s in found.skipped] == [(f"{shard}#dup", "duplicate")]
    assert "the first sample is used" in found.skipped[0].detail
    with tarfile.open(shard, "w") as tar:  # two images in one sample: its first image, and its label
        _add(tar, "two.jpg", photos["cat"][1])
        _add(tar, "two.png", photos["coffee"][1])
        _add(tar, "two.cls", b"0")
    found = scan_dataset(tmp_path)
    assert _keys(found.paths) == ["two"] and found.targets == [0] and read_regular_file(found.paths[0]) == photos["cat"][1]
    assert [(s.path, s.reason) for s in found.skipped] == [(f"{shard}#two", "duplicate")]


def test_keys_with_a_hash_are_read_in_this_process_and_in_another(tmp_path: Path,
                                                                  photos: dict[str, list[bytes]]) -> None:
    shard = _shard(tmp_path / "x#y" / "s-000000.tar", [("a#b", photos["cat"][0], 0), ("c", photos["coffee"][0], 1),
                                                      ("d#1", photos["cat"][1], 0)])
    (shard.parent / "classes.txt").write_text("cat\ncoffee\n")
    found = scan_dataset(shard.parent)
    assert [str(p) for p in found.paths] == [f"{shard}#a#b", f"{shard}#c", f"{shard}#d#1"] and not found.skipped
    assert [read_regular_file(p) for p in found.paths] == [photos["cat"][0], photos["coffee"][0], photos["cat"][1]]
    code = ("import hashlib, sys; from cnnlab.imagedata.decode import read_regular_file; "
            "print(*[hashlib.sha256(read_regular_file(p)).hexdigest() for p in sys.argv[1:]])")
    done = subprocess.run([sys.executable, "-c", code, *map(str, found.paths)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [_sha(photos["cat"][0]), _sha(photos["coffee"][0]), _sha(photos["cat"][1])]


def test_unlabelled_and_unknown_labels_are_skipped_and_named(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    samples: list[tuple[str, bytes, int | str | None]] = [
        ("a", photos["cat"][0], 0), ("b", photos["coffee"][0], 1), ("u", photos["cat"][1], -1),
        ("far", photos["coffee"][1], 7), ("c", photos["cat"][2], 0)]
    shard = _shard(tmp_path / "plain" / "s-000000.tar", [s for s in samples if s[0] != "far"])
    found = scan_dataset(shard.parent)  # no class names: -1 is unlabelled, as in a Hugging Face dataset
    assert found.classes == ["0", "1"] and _keys(found.paths) == ["a", "b", "c"]
    assert [(s.path, s.reason) for s in found.skipped] == [(f"{shard}#u", "missing")]
    assert "unlabelled" in found.skipped[0].detail
    named = _shard(tmp_path / "named" / "s-000000.tar", samples)
    (named.parent / "classes.txt").write_text("cat\ncoffee\n")
    found = scan_dataset(named.parent)  # one index past the class names: that sample is skipped, not the set
    assert found.classes == CLASSES and _keys(found.paths) == ["a", "b", "c"] and found.targets == [0, 1, 0]
    assert sorted((s.path, s.reason) for s in found.skipped) == [(f"{named}#far", "bad-label"),
                                                                 (f"{named}#u", "missing")]
    assert any(f"class index 7 is outside the 2 class names of {named.parent / 'classes.txt'}" == s.detail
               for s in found.skipped)
    assert len(expand_paths([named.parent])[0]) == 5  # predict reads every image, labelled or not


def test_link_members_are_skipped_with_a_reason_and_never_followed(tmp_path: Path,
                                                                   photos: dict[str, list[bytes]]) -> None:
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "good.jpg", photos["cat"][0])
        _add(tar, "good.cls", b"0")
        for name, kind, target in (("soft.jpg", tarfile.SYMTYPE, "/etc/passwd"), ("hard.jpg", tarfile.LNKTYPE,
                                                                                  "good.jpg")):
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
            _add(tar, name.replace(".jpg", ".cls"), b"0")
    found = scan_dataset(shard)
    assert _keys(found.paths) == ["good"]
    reasons = {s.path: (s.reason, s.detail) for s in found.skipped}
    assert reasons[f"{shard}#soft"] == ("not-a-file", "the member 'soft.jpg' is a symbolic link (to '/etc/passwd'); "
                                                      "links are not followed")
    assert reasons[f"{shard}#hard"][0] == "not-a-file" and "a hard link (to 'good.jpg')" in reasons[f"{shard}#hard"][1]


def test_a_truncated_shard_gives_the_samples_before_the_cut_as_webdataset_does(
        tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    whole = _shard(tmp_path / "whole.tar", [(f"{c}{i}", photos[c][i], n) for n, c in enumerate(CLASSES) for i in range(4)])
    cut = tmp_path / "cut" / "s-000000.tar"
    cut.parent.mkdir()
    data = whole.read_bytes()
    cut.write_bytes(data[: len(data) * 2 // 3])
    with pytest.warns(UserWarning):  # webdataset warns of the truncation; cnnlab reports it as a skipped entry
        read_by_webdataset = [s["__key__"] for s in wds.WebDataset(str(cut), handler=wds.warn_and_continue,
                                                                   shardshuffle=False) if "jpg" in s]
    found = scan_dataset(cut.parent)
    assert 0 < len(found) < 8 and _keys(found.paths) == read_by_webdataset
    assert all(read_regular_file(p) for p in found.paths)  # every sample kept is whole
    truncated = [s for s in found.skipped if s.reason == "truncated"]
    assert [s.path for s in truncated] == [str(cut)] and "the samples before are used" in truncated[0].detail


def test_member_names_with_terminal_escapes_are_escaped(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    evil = "\x1b]0;PWNED\x07\x1b[2Jevil"
    shard = tmp_path / "s-000000.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, f"{evil}.jpg", photos["cat"][0])  # no label: skipped, and named
        _add(tar, "ok.jpg", photos["coffee"][0])
        _add(tar, "ok.cls", b"1")
        info = tarfile.TarInfo(f"{evil}2.jpg")
        info.type, info.linkname = tarfile.SYMTYPE, "\x1b[31m/etc/passwd"
        tar.addfile(info)
    found = scan_dataset(shard)
    assert sorted(s.reason for s in found.skipped) == ["missing", "not-a-file"]
    for s in found.skipped:
        assert s.detail.isprintable() and s.path.isprintable() and "\\x1b]0;PWNED\\x07" in s.path
    images, _ = expand_paths([shard])  # predict: the escaped name still reads its image
    assert [read_regular_file(p) for p in images] == [photos["cat"][0], photos["coffee"][0]]
    assert str(images[0]).isprintable()


# -- rows of Hugging Face datasets and Parquet files (findings 9 and 10) -------------------------------------------


def test_a_row_naming_a_file_is_read_only_inside_the_datasets_folder(
        tmp_path: Path, photos: dict[str, list[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab
    from cnnlab.options import RuntimeOptions

    secret = tmp_path / "secret.jpg"  # a real photo outside the dataset: read, it would decode and be scored
    secret.write_bytes(photos["coffee"][3])
    pq = tmp_path / "pq"
    (pq / "images").mkdir(parents=True)
    (pq / "images" / "inside.jpg").write_bytes(photos["cat"][3])
    (pq / "images" / "sneaky.jpg").symlink_to(secret)
    rows = [{"bytes": photos["cat"][0], "path": None}, {"bytes": None, "path": str(secret)},
            {"bytes": None, "path": "images/inside.jpg"}, {"bytes": None, "path": str(pq / "images" / "inside.jpg")},
            {"bytes": None, "path": "images/sneaky.jpg"}, {"bytes": None, "path": "../secret.jpg"}]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    monkeypatch.chdir(pq)  # datasets looks at the files it writes the names of (to_parquet keeps the names)
    datasets.Dataset.from_dict({"image": rows, "label": [0] * len(rows)}, features=features).to_parquet("set.parquet")
    monkeypatch.chdir(tmp_path)
    found = scan_dataset(pq / "set.parquet")
    assert len(found) == 6
    read = {}
    for p in found.paths:
        try:
            read[str(p).rsplit("#", 1)[1]] = _sha(read_regular_file(p))
        except ImageDecodeError as exc:
            read[str(p).rsplit("#", 1)[1]] = exc.reason
    assert read == {"0": _sha(photos["cat"][0]), "1": "outside-dataset", "2": _sha(photos["cat"][3]),
                    "3": _sha(photos["cat"][3]), "4": "outside-dataset", "5": "outside-dataset"}
    # predict skips them, counted and named, and goes on
    result = cnnlab.predict([str(pq / "set.parquet")], model=OFFLINE_MODEL,
                            runtime=RuntimeOptions(device="cpu", batch_size=4, workers=0))
    assert sorted((s.path, s.reason) for s in result.skipped) == [
        (f"{pq}/set.parquet#{i}", "outside-dataset") for i in (1, 4, 5)]
    assert len(result.predictions) == 3


def test_a_saved_dataset_row_naming_a_file_outside_it_is_not_read(tmp_path: Path,
                                                                  photos: dict[str, list[bytes]]) -> None:
    """``save_to_disk`` embeds the images' bytes, so a legitimate saved set reads; an Arrow file crafted to name a
    file instead is read inside its folder only."""
    from datasets.arrow_writer import ArrowWriter

    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photos["coffee"][0])
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    legit = datasets.Dataset.from_dict({"image": [str(secret)], "label": [1]}, features=features)
    legit.save_to_disk(str(tmp_path / "legit"))  # from a path: save_to_disk stores the bytes
    (found,) = scan_dataset(tmp_path / "legit").paths
    assert read_regular_file(found) == photos["coffee"][0]
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"image": [{"bytes": photos["cat"][0], "path": None}] * 2, "label": [0, 1]},
                               features=features).save_to_disk(str(saved))
    (arrow,) = saved.glob("*.arrow")
    with ArrowWriter(features=features, path=str(arrow), embed_local_files=False) as writer:  # path only, no bytes
        writer.write_batch({"image": [{"bytes": photos["cat"][0], "path": None}, {"bytes": None, "path": str(secret)}],
                            "label": [0, 1]})
        writer.finalize()
    first, second = scan_dataset(saved).paths
    assert read_regular_file(first) == photos["cat"][0]
    with pytest.raises(ImageDecodeError, match="outside the dataset's folder") as refused:
        read_regular_file(second)
    assert refused.value.reason == "outside-dataset"


@pytest.mark.parametrize(("values", "kind"), [([b"\x00\x01", b"\x02"], "binary"), ([1.5, 2.0], "double"),
                                              ([True, False], "bool")])
def test_a_label_column_of_neither_indices_nor_names_is_refused(tmp_path: Path, photos: dict[str, list[bytes]],
                                                                values: list[Any], kind: str) -> None:
    images = [{"bytes": photos["cat"][0], "path": None}, {"bytes": photos["coffee"][0], "path": None}]
    datasets.Dataset.from_dict({"image": images, "what": values},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "what": datasets.Value(kind)})).to_parquet(
        str(tmp_path / "set.parquet"))
    with pytest.raises(DatasetError, match=f"the label column 'what' holds {kind} values; a label is a class index "
                                           r"\(an integer\) or a class name \(a string\)"):
        scan_dataset(tmp_path / "set.parquet", label_column="what")


def test_a_class_label_past_its_names_is_skipped_and_named(tmp_path: Path, photos: dict[str, list[bytes]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    good = datasets.Dataset.from_dict({"image": [{"bytes": b, "path": None} for b in photos["cat"][:3]],
                                       "label": [0, 1, 1]}, features=features)
    good.to_parquet(str(tmp_path / "set.parquet"))
    table = pq.read_table(tmp_path / "set.parquet")
    table = table.set_column(1, "label", pa.array([0, 5, -1], pa.int64()))  # ClassLabel stores int64
    pq.write_table(table, tmp_path / "set.parquet")
    found = scan_dataset(tmp_path / "set.parquet")
    assert found.classes == CLASSES and [str(p)[-1] for p in found.paths] == ["0"]
    assert sorted((s.path[-1], s.reason, s.detail) for s in found.skipped) == [
        ("1", "bad-label", "class index 5 is outside the 2 class names of the ClassLabel feature"),
        ("2", "missing", "no label in this row")]
