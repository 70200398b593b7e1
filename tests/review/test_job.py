"""cnnlab review: planted problems in small sets of real photos are found, outputs, cache, apply/undo, CLI."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.errors import UsageError
from cnnlab.imagedata.datasets import scan_dataset
from cnnlab.imagedata.near_duplicates import match, thumbnail
from cnnlab.imagedata.neighbours import nearest_neighbours
from cnnlab.options import ReviewIssue
from cnnlab.review import Finding, ReviewConfig, ReviewResult, apply_review, review, undo_review, write_review_outputs
from cnnlab.review.mislabel import find_mislabels
from cnnlab.review.offtopic import find_offtopic
from cnnlab.review.quarantine import quarantined
from cnnlab.review.result import CSV_COLUMNS
from tests.helpers.fakeweb import FakeWeb
from tests.helpers.images import block_import, grid_tiles, jpeg, save

runner = CliRunner()
CPU = ReviewConfig(device="cpu", batch_size=16, workers=0)


@pytest.fixture(scope="module", autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The ONNX export review embeds with (onnxruntime, when installed) goes to one cache of the session's, for the
    module's fixtures too (``reviewed`` used the user's cache, whose export may come from another exporter)."""
    root = tmp_path_factory.getbasetemp() / "cnnlab-cache"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CNNLAB_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def reviewed(planted: Path) -> ReviewResult:
    return review(planted, CPU)


def paths_of(result: ReviewResult, issue: ReviewIssue) -> dict[str, Finding]:
    return {f.path: f for f in result.of(issue)}


# -- what is found ------------------------------------------------------------------------------------


def test_planted_problems_are_found(reviewed: ReviewResult) -> None:
    mislabels = paths_of(reviewed, ReviewIssue.MISLABEL)
    assert "cat/rocket7.jpg" in mislabels
    assert mislabels["cat/rocket7.jpg"].suggested_label == "rocket"
    assert len(mislabels) <= 3  # a handful at most among 25 readable images
    duplicates = paths_of(reviewed, ReviewIssue.DUPLICATE)
    assert set(duplicates) == {"coffee/crop.jpg"}  # the crop, not the larger original, is flagged
    assert duplicates["coffee/crop.jpg"].evidence["kept"] == "coffee/coffee3.jpg"
    assert duplicates["coffee/crop.jpg"].score >= CPU.duplicate_match
    assert set(paths_of(reviewed, ReviewIssue.UNREADABLE)) == {"cat/broken.jpg"}
    assert set(paths_of(reviewed, ReviewIssue.TOO_SMALL)) == {"coffee/tiny.jpg"}
    assert reviewed.images == 27 and reviewed.embedded == 26
    for kind in ReviewIssue:  # ranked within each kind, most suspicious first
        found = reviewed.of(kind)
        assert [f.rank for f in found] == list(range(1, len(found) + 1))
        assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)


def test_outputs_csv_json_and_self_contained_html(reviewed: ReviewResult, tmp_path: Path) -> None:
    files = write_review_outputs(reviewed, tmp_path / "out")
    rows = list(csv.DictReader(files["csv"].open()))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert {(r["path"], r["issue"], r["suggested_label"]) for r in rows} >= {
        ("cat/rocket7.jpg", "mislabel", "rocket"), ("coffee/crop.jpg", "duplicate", "")}
    assert json.loads(files["json"].read_text())["counts"]["duplicate"] == 1
    page = files["html"].read_text()
    assert page.count("data:image/jpeg;base64,") >= 5 and "<img src=\"http" not in page and "file://" not in page
    sections = [page.index(f'id="{kind.value}"') for kind in ReviewIssue]
    assert sections == sorted(sections)  # one gallery per kind, in the vocabulary's order
    assert "out-of-fold probabilities" in page and "kept copy" in page


def test_second_run_embeds_only_new_files_and_agrees(planted: Path, reviewed: ReviewResult, tmp_path: Path,
                                                     photos: dict[str, Image.Image]) -> None:
    grown = tmp_path / "grown"
    shutil.copytree(planted, grown, ignore=shutil.ignore_patterns(".cnnlab"))  # without the cache
    first = review(grown, CPU)
    assert (first.embedded, first.from_cache) == (26, 0)
    assert [(f.path, f.issue, round(f.score, 4)) for f in first.findings] == \
           [(f.path, f.issue, round(f.score, 4)) for f in reviewed.findings]
    save(grid_tiles(photos["cat"], 8)[0].rotate(90), grown / "cat" / "new.jpg")
    shutil.move(grown / "coffee" / "coffee5.jpg", grown / "coffee" / "renamed.jpg")  # same bytes: still cached
    second = review(grown, CPU)
    assert (second.embedded, second.from_cache) == (1, 26)
    assert list(grown.glob(".cnnlab/embeddings-*.npz"))
    assert "cat/rocket7.jpg" in paths_of(second, ReviewIssue.MISLABEL)


# -- acting on it ---------------------------------------------------------------------------------------


def test_apply_moves_flagged_files_and_undo_puts_them_back_exactly(planted: Path, reviewed: ReviewResult,
                                                                   tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted, data)
    before = {p.relative_to(data): p.read_bytes() for p in data.rglob("*.jpg")}
    report = apply_review(data, reviewed.findings, kinds=[ReviewIssue.DUPLICATE, ReviewIssue.MISLABEL],
                          min_score=0.5)
    moved = {m.path for m in report.moves}
    assert {"coffee/crop.jpg", "cat/rocket7.jpg"} <= moved
    assert all((data / ".quarantine" / p).is_file() and not (data / p).exists() for p in moved)
    scanned = {p.relative_to(data).as_posix() for p in scan_dataset(data).paths}
    assert not moved & scanned and scan_dataset(data).classes == ["cat", "coffee", "rocket"]
    assert set(quarantined(data)) == moved
    restored = undo_review(data)
    assert {m.path for m in restored.moves} == moved
    assert {p.relative_to(data): p.read_bytes() for p in data.rglob("*.jpg")} == before
    assert not quarantined(data) and undo_review(data).moves == []


def test_apply_records_moves_in_a_collect_manifest(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    from cnnlab.collect.manifest import make_record, read_manifest

    data = tmp_path / "collected"
    lines = []
    for i, tile in enumerate(grid_tiles(photos["cat"], 3)):
        save(tile, data / "cat" / f"{i}.jpg")
        lines.append(make_record(**{"class": "cat"}, url=f"http://x/{i}.jpg", status="ok", path=f"cat/{i}.jpg",
                                 sha256=f"{i:064d}"))
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    finding = Finding("cat/1.jpg", "cat", ReviewIssue.OFFTOPIC, 0.8)
    apply_review(data, [finding], kinds=[ReviewIssue.OFFTOPIC])
    last = read_manifest(data / "manifest.jsonl")[-1]
    assert (last["url"], last["status"], last["reason"]) == ("http://x/1.jpg", "rejected", "quarantined-offtopic")
    assert ".quarantine/cat/1.jpg" in last["detail"] and not (data / ".lock").read_text()
    undo_review(data)
    last = read_manifest(data / "manifest.jsonl")[-1]
    assert (last["url"], last["status"], last["path"]) == ("http://x/1.jpg", "ok", "cat/1.jpg")
    assert (data / "cat" / "1.jpg").is_file()


def test_min_score_and_kinds_choose_what_moves(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    data = tmp_path / "d"
    for i, tile in enumerate(grid_tiles(photos["rocket"], 3)):
        save(tile, data / "rocket" / f"{i}.jpg")
    findings = [Finding("rocket/0.jpg", "rocket", ReviewIssue.MISLABEL, 0.9, "cat"),
                Finding("rocket/1.jpg", "rocket", ReviewIssue.MISLABEL, 0.3, "cat"),
                Finding("rocket/2.jpg", "rocket", ReviewIssue.DUPLICATE, 0.99)]
    report = apply_review(data, findings, kinds=[ReviewIssue.MISLABEL], min_score=0.5)
    assert [m.path for m in report.moves] == ["rocket/0.jpg"] and report.moves[0].suggested_label == "cat"


# -- the detectors on their own -----------------------------------------------------------------------------


def test_pixel_match_finds_crops_rescales_recolours_not_neighbouring_tiles(tmp_path: Path,
                                                                            photos: dict[str, Image.Image]) -> None:
    from PIL import ImageEnhance, ImageOps

    base = photos["coffee"].crop((100, 50, 300, 230))
    variants = {
        "crop": base.crop((30, 10, 190, 160)),
        "rescale": base.resize((90, 81)),
        "recolour": ImageEnhance.Contrast(ImageOps.grayscale(base).convert("RGB")).enhance(1.3),
    }
    original = thumbnail(save(base, tmp_path / "base.jpg"), 96)
    for name, img in variants.items():
        assert match(original, thumbnail(save(img, tmp_path / f"{name}.jpg"), 96), fine=True) >= 0.94, name
    elsewhere = thumbnail(save(photos["coffee"].crop((300, 200, 500, 380)), tmp_path / "other.jpg"), 96)
    assert match(original, elsewhere, fine=True) < 0.9


def test_offtopic_is_far_from_every_class_while_a_wrong_label_is_near_another() -> None:
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 64)) * 3
    features = np.concatenate([c + rng.normal(size=(20, 64)) for c in centres] + [rng.normal(size=(1, 64)) * 3])
    targets = np.array([0] * 20 + [1] * 20 + [2] * 20 + [0])
    targets[5] = 1  # a wrong label: an image of class 0 filed under 1
    nb = nearest_neighbours(features, 30)
    found = find_offtopic(nb, targets, 3, k=3, z_threshold=1.5)
    assert found.flagged[60] and int(np.argmax(found.z)) == 60 and 0.5 <= found.score[60] < 1.0
    assert not found.flagged[5] and found.nearest_class[5] == 0
    assert found.flagged.sum() <= 6  # Gaussian clusters have tails: a few false alarms at the default


def test_the_pretrained_models_opinion_is_used_only_where_it_knows_the_classes() -> None:
    from cnnlab.imagedata.labels import imagenet_categories, map_classes
    from cnnlab.review.offtopic import imagenet_mass

    categories = imagenet_categories()
    cat = map_classes(["cat"])["cat"].indices[0]
    logits = np.zeros((41, 1000))
    logits[:40, cat] = 12.0  # the model sees a cat in 40 images...
    mass, why_not = imagenet_mass(logits, ["cat"], categories, None)
    assert why_not is None and mass is not None and mass[:40].min() > 0.9 and mass[40] < 0.01  # ...not in the last
    rng = np.random.default_rng(2)
    features = rng.normal(size=(41, 32)) + 3.0
    nb = nearest_neighbours(features, 30)
    with_opinion = find_offtopic(nb, [0] * 41, 1, k=3, z_threshold=1.5, mass=mass)
    without = find_offtopic(nb, [0] * 41, 1, k=3, z_threshold=1.5)
    assert with_opinion.imagenet_used and with_opinion.flagged[40] and with_opinion.z[40] > without.z[40]
    unsure = find_offtopic(nb, [0] * 41, 1, k=3, z_threshold=1.5, mass=np.full(41, 0.05))
    assert not unsure.imagenet_used and "shown, not used" in unsure.notes[0]
    assert imagenet_mass(logits, ["cat", "astronaut"], categories, None)[0] is None  # a class ImageNet lacks
    assert "not an ImageNet classifier" in str(imagenet_mass(logits[:, :10], ["cat"], categories[:10], None)[1])


def test_mislabels_with_a_class_of_one_image_and_with_one_class() -> None:
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(size=(10, 16)) + 4, rng.normal(size=(10, 16)) - 4, rng.normal(size=(1, 16))])
    targets = [0] * 10 + [1] * 10 + [2]
    targets[3] = 1
    found = find_mislabels(features, targets, ["a", "b", "lonely"], folds=5)
    assert found.flagged.tolist().count(True) >= 1 and found.flagged[3] and found.suggested[3] == 0
    assert not found.checked[20] and any("'lonely' has a single image" in n for n in found.notes)
    alone = find_mislabels(features[:10], [0] * 10, ["a"])
    assert not alone.flagged.any() and "at least two classes" in alone.notes[0]


# -- the command line --------------------------------------------------------------------------------------


def test_cli_review_apply_undo(planted: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(planted, data)
    result = runner.invoke(app, ["review", str(data), "--device", "cpu", "--workers", "0", "-q", "--apply",
                                 "--kinds", "duplicate,unreadable"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert all(len(line) <= 80 for line in result.stdout.splitlines() if line[:1] in "┏┃┡│└")  # the table
    assert "moved 2 files" in result.stdout and "cnnlab review --undo" in result.stdout
    assert (data / ".cnnlab" / "review" / "review.html").is_file()
    assert (data / ".quarantine" / "coffee" / "crop.jpg").is_file() and (data / ".quarantine" / "cat" / "broken.jpg").is_file()
    undone = runner.invoke(app, ["review", "--undo", str(data)])
    assert undone.exit_code == 0 and "restored 2 files" in undone.stdout
    assert (data / "coffee" / "crop.jpg").is_file()


def test_cli_single_class_set_still_finds_duplicates(tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    data = tmp_path / "one"
    tiles = grid_tiles(photos["rocket"], 5)
    for i, tile in enumerate(tiles):
        save(tile, data / "rocket" / f"{i}.jpg")
    save(tiles[2].resize((160, 160)), data / "rocket" / "bigger.jpg")
    result = runner.invoke(app, ["review", str(data), "--device", "cpu", "--workers", "0", "--json", "-q"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert any("single class" in n for n in payload["review"]["notes"])
    assert [(f["path"], f["issue"]) for f in payload["findings"]] == [("rocket/2.jpg", "duplicate")]


@pytest.mark.parametrize(("args", "message"), [
    (["--kinds", "mislabel,typo"], "unknown issue kind 'typo'"),
    (["--out", "{data}/results"], "is inside the data folder"),
    (["--apply", "--model", "no_such_model"], "no_such_model"),
])
def test_cli_usage_errors(args: list[str], message: str, tmp_path: Path, photos: dict[str, Image.Image]) -> None:
    data = tmp_path / "data"
    save(photos["cat"], data / "cat" / "0.jpg")
    result = runner.invoke(app, ["review", str(data), *[a.format(data=data) for a in args]])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not (data / ".cnnlab").exists() and not (data / "results").exists()


def test_cli_undo_without_quarantine_and_missing_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "d" / "cat").mkdir(parents=True)
    result = runner.invoke(app, ["review", "--undo", str(tmp_path / "d")])
    assert result.exit_code == 2 and "nothing to undo" in result.output
    block_import(monkeypatch, "cleanlab")
    result = runner.invoke(app, ["review", str(tmp_path / "d")])
    assert result.exit_code == 1 and "pip install 'cnnlab[review]'" in result.output


# -- collect -> review -> apply -> bench, against the local fake web ---------------------------------------------


@pytest.fixture
def web(photos: dict[str, Image.Image]) -> Iterator[FakeWeb]:
    server = FakeWeb().start()
    for label in ("cat", "coffee"):
        paths = []
        for i, tile in enumerate(grid_tiles(photos[label], 6)):
            paths.append(f"/img/{label}/{i}.jpg")
            server.add(paths[-1], jpeg(tile))
        server.add_results(label, paths)
    crop = grid_tiles(photos["cat"], 6)[1].crop((8, 12, 104, 100)).resize((128, 117))  # a copy phashes miss
    server.add("/img/cat/copy.jpg", jpeg(crop, 80))
    server.bing["cat"].append((server.url("/img/cat/copy.jpg"), None))
    yield server
    server.stop()


@pytest.mark.slow
def test_collect_review_apply_bench_end_to_end(web: FakeWeb, tmp_path: Path) -> None:
    data = tmp_path / "data"
    net = ["--threads", "4", "--per-host", "8", "--host-delay", "0", "--timeout", "2", "--retries", "0", "--allow-private-hosts",
           "--min-size", "32"]
    collected = runner.invoke(app, ["collect", "-c", "cat,coffee", "-n", "7", "--engine-url", web.base, "--out",
                                    str(data), "--review", "-q", *net])
    assert collected.exit_code == 0, collected.output
    assert "review: mislabel" in collected.stdout and (data / ".cnnlab" / "review" / "review.csv").is_file()
    assert len(scan_dataset(data)) == 13
    applied = runner.invoke(app, ["review", str(data), "--device", "cpu", "--workers", "0", "-q", "--apply",
                                  "--kinds", "duplicate"])
    assert applied.exit_code == 0, applied.output
    assert "moved 1 files" in applied.stdout
    from cnnlab.collect.manifest import read_manifest

    last = read_manifest(data / "manifest.jsonl")[-1]
    assert last["status"] == "rejected" and last["reason"] == "quarantined-duplicate"
    assert len(scan_dataset(data)) == 12
    results = tmp_path / "bench"
    bench = runner.invoke(app, ["bench", str(data), "--models", "efficientnet_lite0", "--in-process", "--out",
                                str(results), "-q", "--workers", "0", "--repeats", "3", "-b", "4", "--no-plots",
                                "--device", "cpu"])
    assert bench.exit_code == 0, bench.output
    (row,) = list(csv.DictReader((results / "results.csv").open()))
    assert row["status"] == "ok" and int(row["eval_images"]) == 12 and int(row["skipped_images"]) == 0


def test_what_the_review_command_imports_at_start_is_light() -> None:
    """cnnlab.cli.review imports only these at the top (test_cli checks the whole CLI)."""
    import subprocess
    import sys

    code = ("import sys, cnnlab.review, cnnlab.review.config, cnnlab.jsonable, cnnlab.options; heavy = [m for m in ('torch', 'numpy', 'scipy', 'PIL', 'sklearn', "
            "'cleanlab', 'jinja2') if m in sys.modules]; print(heavy)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- the job: check -> lock -> review -> write (files-only kinds: no model needed) --------------------------

FILES_ONLY = (ReviewIssue.UNREADABLE, ReviewIssue.TOO_SMALL)


def _small_set(root: Path) -> Path:
    save(Image.new("RGB", (80, 80), (200, 30, 30)), root / "cat" / "a.jpg")
    save(Image.new("RGB", (20, 30), (30, 30, 200)), root / "dog" / "tiny.jpg")
    return root


def test_run_writes_into_the_data_sets_own_folder_and_replaces_it(tmp_path: Path) -> None:
    from cnnlab.review import run

    data = _small_set(tmp_path / "data")
    first = run(ReviewConfig(data=data, kinds=FILES_ONLY))
    assert first.files == {k: data / ".cnnlab" / "review" / f"review.{k}" for k in ("csv", "json", "html")}
    assert [r["path"] for r in csv.DictReader(first.files["csv"].open())] == ["dog/tiny.jpg"]
    (data / "dog" / "tiny.jpg").unlink()
    again = run(ReviewConfig(data=data, kinds=FILES_ONLY))  # review's own folder: the latest review, no question
    assert list(csv.DictReader(again.files["csv"].open())) == []


def test_run_refuses_an_output_folder_with_an_earlier_review_unless_overwrite(tmp_path: Path) -> None:
    from cnnlab.review import run

    data = _small_set(tmp_path / "data")
    out = tmp_path / "out"
    run(ReviewConfig(data=data, kinds=FILES_ONLY), out=out)
    (out / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="earlier review run"):
        run(ReviewConfig(data=data, kinds=FILES_ONLY), out=out)
    replaced = run(ReviewConfig(data=data, kinds=FILES_ONLY), out=out, overwrite=True)
    assert replaced.files["html"].is_file() and (out / "mine.txt").read_text() == "keep"


@pytest.mark.parametrize("where", ["inside", "no-data"])
def test_run_checks_before_any_work(where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import cnnlab.review.files
    from cnnlab.review import run

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the review ran")

    monkeypatch.setattr(cnnlab.review.files, "check_files", no_work)
    data = _small_set(tmp_path / "data")
    if where == "inside":
        with pytest.raises(UsageError, match="inside the data folder"):
            run(ReviewConfig(data=data, kinds=FILES_ONLY), out=data / "results")
        assert not (data / "results").exists()
    else:
        with pytest.raises(UsageError, match="no data to review"):
            run(ReviewConfig(kinds=FILES_ONLY))
