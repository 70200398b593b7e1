"""`cnnlab split` on the command line: DATA positional, JSON and table output, a usage error."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli.app import app
from tests.helpers.fakeweb import make_image

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """3 classes x 10 distinct images."""
    root = tmp_path / "data"
    for c, label in enumerate(("cat", "dog", "car")):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i:02d}.jpg").write_bytes(make_image(100 * c + i, (64, 64)))
    return root


def test_split_json(dataset: Path) -> None:
    result = runner.invoke(app, ["split", str(dataset), "--val", "0.1", "--test", "0.2", "--seed", "7", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["images"] == 30 and payload["totals"]["test"] == 6 and payload["file"].endswith("split.csv")
    assert (dataset / "split.csv").is_file()


def test_split_table_and_wide(dataset: Path) -> None:
    plain = runner.invoke(app, ["split", str(dataset)], env={"COLUMNS": "60"})
    assert plain.exit_code == 0, plain.output
    assert "total" not in plain.stdout and "30 images" in plain.stdout
    wide = runner.invoke(app, ["split", str(dataset), "--wide"], env={"COLUMNS": "60"})
    assert wide.exit_code == 0, wide.output
    assert "total" in wide.stdout
    (cat,) = [line for line in wide.stdout.splitlines() if "cat" in line and "10" in line]
    assert cat.split("│")[-2].strip() == "10"  # the total column: every image of the class


def test_split_refuses_fractions_over_one(dataset: Path) -> None:
    bad = runner.invoke(app, ["split", str(dataset), "--val", "0.6", "--test", "0.6"])
    assert bad.exit_code == 2 and "fractions" in bad.output
    assert not (dataset / "split.csv").exists()


def test_split_keeps_crops_of_one_photo_together_unless_told_not_to(tmp_path: Path) -> None:
    from tests.helpers.images import real_photos_with_crops

    root = tmp_path / "photos"
    crops = real_photos_with_crops(root)
    shown = runner.invoke(app, ["split", str(root), "--val", "0.2", "--test", "0.2", "-q"])
    assert shown.exit_code == 0, shown.output
    assert f"{len(crops)} pairs of crops among them" in shown.output
    with (root / "split.csv").open() as fh:
        split_of = {row["path"]: row["split"] for row in csv.DictReader(fh)}
    assert all(split_of[crop] == split_of[source] for crop, source in crops.items())
    off = runner.invoke(app, ["split", str(root), "--no-crops", "--json"])
    assert off.exit_code == 0, off.output
    assert json.loads(off.stdout)["crop_pairs"] is None


def test_split_counts_what_it_could_not_use(dataset: Path) -> None:
    import os

    (dataset / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    (dataset / "cat" / "dangling.jpg").symlink_to(dataset / "nowhere.jpg")
    os.mkfifo(dataset / "dog" / "pipe.jpg")
    (dataset / "dog" / "folder.jpg").mkdir()
    shown = runner.invoke(app, ["split", str(dataset), "--no-crops", "--json"])
    assert shown.exit_code == 0, shown.output
    result = json.loads(shown.stdout)
    assert result["unhashed"] == ["cat/broken.jpg"]
    assert sorted(Path(s["path"]).name for s in result["skipped"]) == ["dangling.jpg", "pipe.jpg"]
    plain = runner.invoke(app, ["split", str(dataset), "--no-crops"])
    assert "1 files could not be decoded (cat/broken.jpg)" in plain.output
    assert "2 entries are not image files" in plain.output
