"""Reading labelled sets: class folders, CSV/JSONL manifests, splits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import expand_paths, scan_dataset
from tests.helpers.images import make_image


def test_class_folders_ignore_hidden_and_non_images(tmp_path: Path) -> None:
    make_image(tmp_path / "b" / "1.png")
    make_image(tmp_path / "a" / "x" / "2.jpg")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    make_image(tmp_path / ".partial" / "3.jpg")
    make_image(tmp_path / "a" / ".tmp.jpg")  # hidden (camera names such as _DSC1.JPG are not: see test_hostile_inputs)
    (tmp_path / "empty").mkdir()
    ds = scan_dataset(tmp_path)
    assert ds.classes == ["a", "b", "empty"]
    assert [p.name for p in ds.paths] == ["2.jpg", "1.png"] and ds.targets == [0, 1]
    assert ds.empty_classes == ["empty"]


def test_csv_manifest_with_split_and_missing_file(tmp_path: Path) -> None:
    make_image(tmp_path / "imgs" / "1.jpg")
    make_image(tmp_path / "imgs" / "2.jpg")
    (tmp_path / "split.csv").write_text("path,label,split\nimgs/1.jpg,cat,train\nimgs/2.jpg,dog,test\nimgs/3.jpg,dog,test\n")
    test = scan_dataset(tmp_path, split="test")
    assert test.classes == ["dog"] and [p.name for p in test.paths] == ["2.jpg"]
    assert [(Path(s.path).name, s.reason) for s in test.skipped] == [("3.jpg", "missing")]
    assert len(scan_dataset(tmp_path / "split.csv")) == 2
    with pytest.raises(DatasetError, match="no rows with split"):
        scan_dataset(tmp_path, split="val")


def test_jsonl_manifest_keeps_only_ok_rows(tmp_path: Path) -> None:
    make_image(tmp_path / "1.jpg")
    lines = [{"path": "1.jpg", "label": "cat", "status": "ok"}, {"path": "2.jpg", "label": "cat", "status": "duplicate"}]
    (tmp_path / "manifest.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ds = scan_dataset(tmp_path / "manifest.jsonl")
    assert len(ds) == 1 and not ds.skipped


def test_bad_manifests_and_folders(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("file,class\na.jpg,cat\n")
    with pytest.raises(DatasetError, match="'path' and 'label'"):
        scan_dataset(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="no such folder"):
        scan_dataset(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    make_image(tmp_path / "flat" / "x.jpg")
    with pytest.raises(DatasetError, match="no class folders"):
        scan_dataset(tmp_path / "flat")


def test_expand_paths_dedups_and_reports_missing(tmp_path: Path) -> None:
    a = make_image(tmp_path / "a.jpg")
    found, missing = expand_paths([a, tmp_path, str(tmp_path / "*.jpg"), tmp_path / "zz.png"])
    assert found == [a]
    assert [m.reason for m in missing] == ["missing"]
