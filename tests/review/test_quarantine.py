"""cnnlab review against hostile inputs and wasted work: odd file names, odd files, bad output folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.options import ReviewIssue
from cnnlab.review import Finding, ReviewResult, apply_review, undo_review, write_review_outputs
from cnnlab.review.quarantine import quarantined
from cnnlab.review.result import read_csv
from tests.helpers.images import block_import

runner = CliRunner()


# -- file names that are not UTF-8 -------------------------------------------------------------------

_ODD = "caf\udce9\udcff.jpg"  # the bytes b"caf\xe9\xff.jpg" as Python reads them from a Linux folder


def _result(root: Path, findings: list[Finding]) -> ReviewResult:
    return ReviewResult(source=str(root), root=root, model="m", classes=["cat", "dog"], class_counts={"cat": 1, "dog": 1},
                        images=2, findings=findings, seconds={"total": 1.0})


def test_outputs_with_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """Regression: review.csv failed with UnicodeEncodeError (a traceback) on such a name."""
    odd = f"cat/{_ODD}"
    line = "cat/new\nline,\"q\".jpg"
    result = _result(tmp_path, [Finding(odd, "cat", ReviewIssue.DUPLICATE, 1.0, detail=f"near-duplicate of {line}"),
                                Finding(line, "cat", ReviewIssue.MISLABEL, 0.9, suggested_label="dog")])
    files = write_review_outputs(result, tmp_path / "out")
    raw = files["csv"].read_bytes()
    assert b"cat/caf\xe9\xff.jpg" in raw  # the file's own bytes: the path names the file
    back = read_csv(files["csv"])
    assert [f.path for f in back] == [odd, line]  # newlines, commas and quotes survive the CSV too
    assert json.loads(files["json"].read_text(encoding="utf-8"))["findings"][0]["path"] == odd
    page = files["html"].read_text(encoding="utf-8")  # valid UTF-8
    assert "cat/caf\\xe9\\xff.jpg" in page


def test_apply_and_undo_a_file_whose_name_is_not_utf8(tmp_path: Path) -> None:
    """Regression: the move log was written with a strict UTF-8 encoder and failed after nothing was moved."""
    (tmp_path / "cat").mkdir()
    odd = tmp_path / "cat" / _ODD
    odd.write_bytes(b"x")
    moved = apply_review(tmp_path, [Finding(f"cat/{_ODD}", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
    assert len(moved.moves) == 1 and not odd.exists()
    assert (tmp_path / ".quarantine" / "cat" / _ODD).is_file()
    assert list(quarantined(tmp_path)) == [f"cat/{_ODD}"]
    restored = undo_review(tmp_path)
    assert len(restored.moves) == 1 and odd.read_bytes() == b"x"


# -- output folders ----------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_cli_out_that_is_a_file_is_refused_before_any_work(where: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: the whole review ran (embedding every image) before failing to write review.csv."""
    import cnnlab.review.model

    def no_work(*args: object, **kwargs: object) -> None:
        raise AssertionError("the review ran")

    monkeypatch.setattr(cnnlab.review.model, "load_review_model", no_work)
    (tmp_path / "data" / "cat").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if where == "file" else tmp_path / "file" / "sub"
    result = runner.invoke(app, ["review", str(tmp_path / "data"), "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert "not a folder" in result.output and "Traceback" not in result.output
    assert (tmp_path / "file").read_text() == "x"


# -- odd entries in the dataset folder, end to end -----------------------------------------------------


def test_cli_review_reports_fifos_device_links_and_loops_and_survives_odd_names(tmp_path: Path,
                                                                                 real_photos: dict[str, Path]) -> None:
    """Regression: FIFOs, links to /dev/zero and symlink loops were dropped without a word; odd names crashed the CSV."""
    import os

    from PIL import Image

    data = tmp_path / "data"
    for label, photo in (("cat", "cat"), ("coffee", "coffee")):
        (data / label).mkdir(parents=True)
        with Image.open(real_photos[photo]) as img:
            rgb = img.convert("RGB")
        for i in range(3):
            rgb.crop((i * 60, 0, i * 60 + 160, 160)).save(data / label / f"{i}.jpg")
    (data / "cat" / "0.jpg").rename(data / "cat" / _ODD)
    (data / "coffee" / "0.jpg").rename(data / "coffee" / "new\nline,\"q\".jpg")
    os.mkfifo(data / "cat" / "fifo.jpg")
    (data / "cat" / "zero.jpg").symlink_to("/dev/zero")
    (data / "cat" / "loop").symlink_to("..")
    result = runner.invoke(app, ["review", str(data), "--device", "cpu", "--workers", "0", "--json", "-q",
                                 "--batch-size", "8", "--no-cache"])
    assert result.exit_code == 0, result.output
    notes = "\n".join(json.loads(result.stdout)["review"]["notes"])
    assert "2 entries not read (not-a-file)" in notes and "1 entry not read (symlink-loop)" in notes
    assert (data / ".cnnlab" / "review" / "review.csv").is_file()


def test_collect_review_without_the_extra_stops_before_the_crawl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: `collect --review` crawled everything, then said that cleanlab is missing."""
    from PIL import Image

    source = tmp_path / "photos"
    source.mkdir()
    Image.new("RGB", (96, 80), (200, 30, 30)).save(source / "a.jpg")
    block_import(monkeypatch, "cleanlab")
    out = tmp_path / "data"
    result = runner.invoke(app, ["collect", "--from-folder", str(source), "--label", "red", "--out", str(out),
                                 "--review", "-q"])
    assert result.exit_code == 1 and "pip install 'cnnlab[review]'" in result.output
    assert not (out / "manifest.jsonl").exists()


def test_cli_out_next_to_a_manifest_or_data_that_does_not_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: a missing DATA was reported as "--out ... would be read as a class", and so was any
    --out folder next to a CSV manifest (whose folders are never scanned)."""
    missing = runner.invoke(app, ["review", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "no such folder or manifest" in missing.output
    assert "inside the data folder" not in missing.output
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\na.jpg,cat\n")
    beside = runner.invoke(app, ["review", str(manifest), "--out", str(tmp_path / "results")])
    assert "no images to review" in beside.output  # the output folder passed; the data is what is wrong
    assert "inside the data folder" not in beside.output


# -- the quarantine stays inside the dataset folder ---------------------------------------------------


def test_undo_does_not_follow_a_move_log_out_of_the_dataset(tmp_path: Path) -> None:
    """Regression: a crafted .quarantine/moves.jsonl (in a downloaded set) made --undo write files anywhere."""
    data = tmp_path / "data"
    (data / ".quarantine" / "cat").mkdir(parents=True)
    (data / ".quarantine" / "cat" / "x.jpg").write_bytes(b"payload")
    outside = tmp_path / "victim" / "planted.pth"
    records = [{"action": "quarantine", "path": "../victim/planted.pth", "quarantined": ".quarantine/cat/x.jpg",
                "issue": "duplicate", "score": 1.0},
               {"action": "quarantine", "path": str(outside), "quarantined": ".quarantine/cat/x.jpg",
                "issue": "duplicate", "score": 1.0}]
    (data / ".quarantine" / "moves.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    report = undo_review(data)
    assert not report.moves and not outside.exists()
    assert (data / ".quarantine" / "cat" / "x.jpg").read_bytes() == b"payload"
    assert len(report.notes) == 2 and all("outside" in n for n in report.notes)


def test_apply_does_not_move_files_through_a_linked_folder(tmp_path: Path) -> None:
    """Regression: a finding under a class folder that links elsewhere moved the file from outside the set."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.jpg").write_bytes(b"not yours")
    data = tmp_path / "data"
    data.mkdir()
    (data / "cat").symlink_to(elsewhere)
    report = apply_review(data, [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
    assert not report.moves and (elsewhere / "x.jpg").read_bytes() == b"not yours"
    assert "outside" in report.notes[0]


@pytest.mark.parametrize("cut", [0, 20, 3000])
def test_a_truncated_embedding_cache_is_rebuilt_not_fatal(tmp_path: Path, cut: int) -> None:
    from cnnlab.review.embeddings import EmbeddingCache

    identity = {"format": 1, "model": "m"}
    file = tmp_path / "embeddings-m.npz"
    whole = EmbeddingCache(file, identity)
    for i in range(50):
        whole.vectors[f"{i:064x}"] = (np.full(64, i, np.float16), np.full(10, i, np.float16))
    whole.save()
    file.write_bytes(file.read_bytes()[:cut])  # a write cut short (disk full, killed, two runs at once)
    again = EmbeddingCache(file, identity)
    assert again.vectors == {} and again.index == {}
