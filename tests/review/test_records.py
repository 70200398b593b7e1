"""cnnlab review of record sets (a saved Hugging Face dataset, WebDataset shards) named as the docs name them,
relative to the working folder: thumbnails in the page, the embeddings cache, what an unlabelled sample is
called, and --apply refused before any work (review findings 2, 3, 5 and 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.options import ReviewIssue
from cnnlab.review import ReviewConfig, review, run
from tests.helpers.images import grid_tiles, jpeg, package_photo

datasets = pytest.importorskip("datasets")
wds = pytest.importorskip("webdataset")

CLASSES = ["cat", "coffee"]
CPU = ReviewConfig(device="cpu", batch_size=16, workers=0)
FILES_ONLY = (ReviewIssue.UNREADABLE, ReviewIssue.TOO_SMALL)
SETS = ["saved", "shards"]


@pytest.fixture(autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ONNX export review embeds with (onnxruntime, when installed) goes to one cache of the session's."""
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four real photo tiles of each class and one 24-pixel image (too small), as a saved dataset ``saved`` and as
    shards ``shards/`` (which also hold a sample without a label); the folder they are in."""
    root = tmp_path_factory.mktemp("records")
    images, labels = [], []
    for label, name in enumerate(CLASSES):
        photo = package_photo("skimage", "data", "chelsea.png" if name == "cat" else "coffee.png")
        for tile in grid_tiles(photo, 4, 96):
            images.append(jpeg(tile))
            labels.append(label)
    images.append(jpeg(Image.new("RGB", (24, 24), (200, 30, 30))))
    labels.append(0)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    rows = {"image": [{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)], "label": labels}
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(root / "saved"))
    (root / "shards").mkdir()
    with wds.TarWriter(str(root / "shards" / "set-000000.tar")) as sink:
        for i, (data, label) in enumerate(zip(images, labels)):
            sink.write({"__key__": f"s{i}", "jpg": data, "cls": label})
        sink.write({"__key__": "nolabel", "jpg": images[0]})
    (root / "shards" / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture
def inside(stored: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the stored sets (review writes into them) as the working folder."""
    import shutil

    for name in SETS:
        shutil.copytree(stored / name, tmp_path / name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("source", SETS)
def test_a_set_named_relative_to_the_working_folder_shows_its_thumbnails(inside: Path, source: str) -> None:
    """`cnnlab review saved` showed "no preview" on every card; with an absolute path it showed the images."""
    for data in (Path(source), inside / source):
        result = run(ReviewConfig(data=data, kinds=FILES_ONLY))
        (small,) = result.of(ReviewIssue.TOO_SMALL)
        assert small.path.endswith(("saved#8", "set-000000.tar#s8"))
        page = result.files["html"].read_text(encoding="utf-8")
        assert "no preview" not in page and page.count('class="main" src="data:image/jpeg;base64,') == 1, data


@pytest.mark.parametrize("source", SETS)
def test_a_record_set_is_embedded_once_and_read_from_the_cache_after(inside: Path, source: str) -> None:
    """Every rerun said "9 embedded, 0 from the cache": a record's key was the stat of a file that is not there."""
    first = review(Path(source), CPU)
    assert (first.embedded, first.from_cache) == (9, 0)
    assert list(inside.glob(f"{source}/.cnnlab/embeddings-*.npz"))
    again = review(Path(source), CPU)
    assert (again.embedded, again.from_cache) == (0, 9)
    assert [(f.path, f.issue, round(f.score, 4)) for f in again.findings] == \
           [(f.path, f.issue, round(f.score, 4)) for f in first.findings]
    elsewhere = review(inside / source, CPU)  # the same records named another way: the same cache entries
    assert (elsewhere.embedded, elsewhere.from_cache) == (0, 9)


def test_a_sample_without_a_label_is_said_to_be_unlabelled_not_missing_from_a_manifest(inside: Path) -> None:
    result = review(Path("shards"), ReviewConfig(kinds=FILES_ONLY))
    assert result.images == 9
    assert not [n for n in result.notes if "manifest" in n]
    (note,) = [n for n in result.notes if "without a label" in n]
    assert note.startswith("1 record without a label not reviewed (e.g. shards/set-000000.tar#nolabel: no label")


@pytest.mark.parametrize("source", SETS)
def test_apply_on_a_record_set_is_refused_before_any_work(inside: Path, source: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.review.job

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the review ran")

    monkeypatch.setattr(cnnlab.review.job._Review, "prepare", no_work)
    done = CliRunner().invoke(app, ["review", source, "--apply"], env={"COLUMNS": "200"})
    assert done.exit_code == 2, done.output
    assert done.output.startswith(f"error: moving flagged files needs a folder of image files; {source} is a ")
    assert "review.csv" in done.output and not (inside / source / ".cnnlab").exists()
