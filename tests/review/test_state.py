"""cnnlab's own folders inside a data set (.cnnlab, .quarantine, its move log) are never followed out of it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.cli.app import app
from cnnlab.errors import DatasetError
from cnnlab.options import ReviewIssue
from cnnlab.review import Finding, apply_review, undo_review
from tests.helpers.images import make_image

runner = CliRunner()


def _data(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "data"
    make_image(data / "cat" / "x.jpg")
    make_image(data / "dog" / "y.jpg")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return data, elsewhere


def test_apply_refuses_a_quarantine_folder_that_links_elsewhere(tmp_path: Path) -> None:
    """Regression (issue 27, item 6): --apply moved the images into the linked folder and logged there."""
    data, elsewhere = _data(tmp_path)
    (data / ".quarantine").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="symbolic link"):
        apply_review(data, [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
    assert (data / "cat" / "x.jpg").is_file() and list(elsewhere.iterdir()) == []


def test_apply_and_undo_refuse_a_move_log_that_links_elsewhere(tmp_path: Path) -> None:
    """Regression (issue 27, item 6): the moves were appended to whatever file the log linked to."""
    data, elsewhere = _data(tmp_path)
    victim = elsewhere / "notes.txt"
    victim.write_text("mine\n")
    (data / ".quarantine").mkdir()
    (data / ".quarantine" / "moves.jsonl").symlink_to(victim)
    with pytest.raises(DatasetError, match="symbolic link"):
        apply_review(data, [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
    with pytest.raises(DatasetError, match="symbolic link"):
        undo_review(data)
    assert victim.read_text() == "mine\n" and (data / "cat" / "x.jpg").is_file()


def test_apply_does_not_move_into_a_quarantine_subfolder_that_links_elsewhere(tmp_path: Path) -> None:
    data, elsewhere = _data(tmp_path)
    (data / ".quarantine").mkdir()
    (data / ".quarantine" / "cat").symlink_to(elsewhere)
    report = apply_review(data, [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
    assert not report.moves and "outside" in report.notes[0]
    assert (data / "cat" / "x.jpg").is_file() and list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("out", [None, "explicit"])
def test_review_refuses_a_state_folder_that_links_elsewhere(tmp_path: Path, out: str | None) -> None:
    """Regression (issue 27, item 6): review wrote its embeddings cache (and by default its reports) into the
    folder DATA/.cnnlab linked to. Refused before the model is loaded."""
    data, elsewhere = _data(tmp_path)
    (data / ".cnnlab").symlink_to(elsewhere)
    args = ["review", str(data), "--device", "cpu", "-q"] + (["--out", str(tmp_path / "out")] if out else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "symbolic link" in result.output and "Traceback" not in result.output
    assert list(elsewhere.iterdir()) == [] and not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["apply", "undo"])
def test_a_quarantine_that_is_a_file_is_a_clear_message(tmp_path: Path, command: str) -> None:
    """Regression (issue 27): --apply died with a FileExistsError traceback; --undo said there was nothing to undo."""
    data, _ = _data(tmp_path)
    (data / ".quarantine").write_text("not a folder")
    if command == "apply":
        with pytest.raises(DatasetError, match="is a file, not a folder"):
            apply_review(data, [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0)], kinds=list(ReviewIssue))
        assert (data / "cat" / "x.jpg").is_file()
    else:
        result = runner.invoke(app, ["review", "--undo", str(data)])
        assert result.exit_code == 2 and "is a file, not a folder" in result.output
        assert "Traceback" not in result.output and "nothing to undo" not in result.output
    assert (data / ".quarantine").read_text() == "not a folder"


def test_undo_when_an_original_folder_has_become_a_file(tmp_path: Path) -> None:
    """Regression (issue 27, items 7 and 12): a FileExistsError traceback part-way through the undo, the other
    files not restored; then a rerun reported success and the log recorded a restore that never happened."""
    data, _ = _data(tmp_path)
    findings = [Finding("cat/x.jpg", "cat", ReviewIssue.DUPLICATE, 1.0), Finding("dog/y.jpg", "dog", ReviewIssue.DUPLICATE, 1.0)]
    assert len(apply_review(data, findings, kinds=list(ReviewIssue)).moves) == 2
    (data / "cat").rmdir()
    (data / "cat").write_text("a file where the folder was")
    for attempt in range(2):
        result = runner.invoke(app, ["review", "--undo", str(data)])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output and "cat/x.jpg: not restored" in result.output
        assert "is now a file" in result.output
        assert f"restored {1 - attempt} files" in result.stdout  # the other file, the first time only
    assert (data / "dog" / "y.jpg").is_file() and (data / ".quarantine" / "cat" / "x.jpg").is_file()
    log = [json.loads(line) for line in (data / ".quarantine" / "moves.jsonl").read_text().splitlines()]
    assert [(r["action"], r["path"]) for r in log if r["action"] == "restore"] == [("restore", "dog/y.jpg")]
    (data / "cat").unlink()  # the user puts things right: the file comes back
    assert [m.path for m in undo_review(data).moves] == ["cat/x.jpg"] and (data / "cat" / "x.jpg").is_file()
