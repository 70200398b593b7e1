"""`make_split`: stratified, deterministic, near duplicates kept in one split, readable by the data reader."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from cnnlab.errors import DatasetError
from cnnlab.imagedata.datasets import scan_dataset
from cnnlab.imagedata.splits import make_split
from tests.helpers.fakeweb import bad_exif_jpeg, make_image, resized
from tests.helpers.images import real_photos_with_crops


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """3 classes x 20 images; in each class 3 groups of near duplicates (an image + 2 resized copies)."""
    root = tmp_path / "data"
    for c, label in enumerate(("cat", "dog", "car")):
        (root / label).mkdir(parents=True)
        for i in range(14):
            (root / label / f"{i:02d}.jpg").write_bytes(make_image(1000 * c + i))
        for g in range(3):
            original = make_image(1000 * c + 500 + g)
            (root / label / f"g{g}-a.jpg").write_bytes(original)
            (root / label / f"g{g}-b.jpg").write_bytes(resized(original, (140, 140)))
    (root / "_trash").mkdir()
    (root / "_trash" / "x.jpg").write_bytes(make_image(7))
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_split_is_stratified_and_keeps_near_duplicates_together(dataset: Path) -> None:
    result = make_split(dataset, val=0.15, test=0.15, seed=0)
    rows = read_rows(dataset / "split.csv")
    assert list(rows[0]) == ["path", "label", "split"] and len(rows) == 60
    assert all(not r["path"].startswith("/") and "\\" not in r["path"] for r in rows)
    assert not any(r["path"].startswith("_trash") for r in rows)
    for label in ("cat", "dog", "car"):
        counts = Counter(r["split"] for r in rows if r["label"] == label)
        assert counts["train"] + counts["val"] + counts["test"] == 20
        assert 2 <= counts["val"] <= 4 and 2 <= counts["test"] <= 4, (label, counts)
    split_of = {r["path"]: r["split"] for r in rows}
    for label in ("cat", "dog", "car"):
        for g in range(3):
            assert split_of[f"{label}/g{g}-a.jpg"] == split_of[f"{label}/g{g}-b.jpg"]
    assert result.near_duplicate_groups == 9 and result.images_in_near_duplicate_groups == 18
    assert result.groups == 51
    # the bench/train reader takes the file as it is
    test_set = scan_dataset(dataset, split="test")
    assert len(test_set) == sum(r["split"] == "test" for r in rows)


def test_split_is_deterministic(dataset: Path) -> None:
    make_split(dataset, seed=3)
    first = (dataset / "split.csv").read_bytes()
    make_split(dataset, seed=3)
    assert (dataset / "split.csv").read_bytes() == first
    make_split(dataset, seed=4)
    assert (dataset / "split.csv").read_bytes() != first


def test_cross_class_near_duplicates_share_a_split(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(10):
            (root / label / f"{i}.jpg").write_bytes(make_image(hash((label, i)) % 10_000))
    twin = make_image(424242)
    (root / "a" / "twin.jpg").write_bytes(twin)
    (root / "b" / "twin.jpg").write_bytes(resized(twin, (120, 120)))
    for seed in range(5):
        result = make_split(root, seed=seed, write=False)
        split_of = {r.path: r.split for r in result.rows}
        assert split_of["a/twin.jpg"] == split_of["b/twin.jpg"]


def test_phashes_come_from_the_collect_manifest(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "cat").mkdir(parents=True)
    for i in range(8):
        (root / "cat" / f"{i}.jpg").write_bytes(make_image(i))
    # the manifest says 0.jpg and 1.jpg look alike (they do not): make_split must believe it
    lines = [{"class": "cat", "label": "cat", "status": "ok", "path": f"cat/{i}.jpg", "phash": "00000000000000ff" if i < 2 else f"{i:016x}ffff0000"}
             for i in range(8)]
    (root / "manifest.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = make_split(root, val=0.25, test=0.25, seed=1, write=False)
    groups = defaultdict(set)
    for r in result.rows:
        groups[r.group].add(r.path)
    assert {"cat/0.jpg", "cat/1.jpg"} in groups.values()


def test_threshold_minus_one_groups_nothing(dataset: Path) -> None:
    result = make_split(dataset, near_dup_threshold=-1, write=False)
    assert result.groups == 60 and result.near_duplicate_groups == 0


def test_bad_arguments(tmp_path: Path, dataset: Path) -> None:
    with pytest.raises(DatasetError, match="fractions"):
        make_split(dataset, val=0.5, test=0.5)
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        make_split(tmp_path / "empty")


def test_a_photo_with_odd_exif_is_split_not_a_crash(tmp_path: Path) -> None:
    """Issue 27, item 2: split hashes every image; an EXIF tag Pillow cannot write back raised struct.error."""
    root = tmp_path / "data"
    for c, label in enumerate(("cat", "dog")):
        (root / label).mkdir(parents=True)
        for i in range(4):
            (root / label / f"{i}.jpg").write_bytes(make_image(100 * c + i))
    (root / "cat" / "odd.jpg").write_bytes(bad_exif_jpeg())
    result = make_split(root, val=0.25, test=0.25)
    assert len(result.rows) == 9 and result.unhashed == []


def test_reading_and_splitting_a_data_set_never_imports_the_crawler(dataset: Path) -> None:
    """Layering (issue 22): imagedata sits below the jobs; split's perceptual hashes live in imagedata.hashes."""
    code = (
        "import sys; from cnnlab.imagedata.splits import make_split; "
        f"make_split({str(dataset)!r}, val=0.1, test=0.1); "
        "jobs = sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['cnnlab', 'collect'], ['cnnlab', 'bench'], ['cnnlab', 'train'], ['cnnlab', 'review'])); "
        "print(jobs); sys.exit(1 if jobs else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("threshold", [33, 99, -2])
def test_a_near_duplicate_threshold_that_groups_unrelated_photos_is_refused(tmp_path: Path, threshold: int) -> None:
    """Found by review: ``--near-dup-threshold 99`` put every image in one group, all in train, exit 0."""
    from cnnlab.errors import DatasetError
    from cnnlab.imagedata.splits import make_split

    (tmp_path / "a").mkdir()
    with pytest.raises(DatasetError, match="near-duplicate threshold"):
        make_split(tmp_path, near_dup_threshold=threshold)
    assert not (tmp_path / "split.csv").exists()


def test_crops_of_one_photo_never_straddle_splits(tmp_path: Path) -> None:
    """Perceptual hashes miss a 80-90% crop; features verified on pixels find it, and nothing else is grouped."""
    from cnnlab.runtime.features import image_features

    root = tmp_path / "photos"
    crops = real_photos_with_crops(root)
    by_hash = make_split(root, seed=0, write=False)
    group_by_hash = {r.path: r.group for r in by_hash.rows}
    assert by_hash.crop_pairs is None
    assert sum(group_by_hash[c] == group_by_hash[s] for c, s in crops.items()) < len(crops)  # hashes miss some

    embed_calls: list[int] = []

    def embed(paths):  # type: ignore[no-untyped-def]
        embed_calls.append(len(paths))
        return image_features(paths)

    for seed in range(3):
        result = make_split(root, val=0.2, test=0.2, seed=seed, write=False, embed=embed)
        split_of = {r.path: r.split for r in result.rows}
        group_of = {r.path: r.group for r in result.rows}
        assert result.crop_pairs == len(crops)
        for crop, source in crops.items():
            assert group_of[crop] == group_of[source] and split_of[crop] == split_of[source]
        assert result.near_duplicate_groups == len(crops)  # the distinct photos stay apart
        assert result.to_dict()["crop_pairs"] == len(crops)
    assert embed_calls == [13, 13, 13]
    none = make_split(root, seed=0, write=False, embed=embed, near_dup_threshold=-1)
    assert none.crop_pairs is None and none.near_duplicate_groups == 0 and len(embed_calls) == 3
