"""Review's detectors: one per kind, registered by kind, each saying what it needs; the job runs those asked for."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnlab.review.model
from cnnlab.errors import UsageError
from cnnlab.options import ReviewIssue
from cnnlab.review import Detector, Need, ReviewConfig, review
from cnnlab.review.detectors import REGISTRY, detectors_for, register
from tests.helpers.images import make_image

FILES_ONLY = (ReviewIssue.UNREADABLE, ReviewIssue.TOO_SMALL)


def test_every_kind_has_one_detector_that_names_it() -> None:
    found = detectors_for(list(ReviewIssue))
    assert [d.issue for d in found] == list(ReviewIssue)
    assert {d.issue for d in found if d.needs_embeddings()} == {
        ReviewIssue.MISLABEL, ReviewIssue.OFFTOPIC, ReviewIssue.DUPLICATE}
    assert all(Need.PROBABILITIES in d.needs for d in found if d.issue in (ReviewIssue.MISLABEL, ReviewIssue.OFFTOPIC))


def test_a_detector_must_name_its_issue_and_an_issue_has_one_detector() -> None:
    with pytest.raises(TypeError, match="must name its issue"):
        type("Nameless", (Detector,), {})
    with pytest.raises(ValueError, match="already has a detector"):
        register(type("Second", (Detector,), {"issue": ReviewIssue.TOO_SMALL}))
    assert REGISTRY[ReviewIssue.TOO_SMALL].__name__ == "TooSmallDetector"


def test_files_only_kinds_load_no_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model loads only for a detector that needs embeddings."""
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(cnnlab.review.model, "load_review_model", no_model)
    make_image(tmp_path / "cat" / "a.jpg", size=(80, 80))
    make_image(tmp_path / "cat" / "small.jpg", size=(20, 30))
    (tmp_path / "dog").mkdir()
    (tmp_path / "dog" / "empty.jpg").write_bytes(b"")
    result = review(tmp_path, ReviewConfig(kinds=FILES_ONLY))
    assert [(f.path, f.issue) for f in result.findings] == [
        ("dog/empty.jpg", ReviewIssue.UNREADABLE), ("cat/small.jpg", ReviewIssue.TOO_SMALL)]
    assert result.embedded == 0 and result.settings["kinds"] == ["unreadable", "too-small"]
    only = review(tmp_path, ReviewConfig(kinds=(ReviewIssue.TOO_SMALL,)))
    assert [f.issue for f in only.findings] == [ReviewIssue.TOO_SMALL]


def test_a_typo_in_the_kinds_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="unknown issue kind 'mislabelled'"):
        ReviewConfig(kinds=("mislabelled",))  # type: ignore[arg-type]


def test_of_two_copies_in_two_classes_the_one_filed_in_the_wrong_class_is_flagged(
        planted: Path, tmp_path: Path) -> None:
    """Found by review: a copy of a photo filed in a second class could get the correctly filed original
    quarantined (the first path in sort order was kept). The copy that looks like another class goes."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(planted, data)
    original = data / "rocket" / "rocket1.jpg"
    shutil.copyfile(original, data / "coffee" / "0-rocket-copy.jpg")  # sorts before rocket/ as a path
    result = review(data, ReviewConfig(device="cpu", batch_size=16, workers=0,
                                       kinds=(ReviewIssue.DUPLICATE,)))
    flagged = {f.path for f in result.of(ReviewIssue.DUPLICATE)}
    assert "coffee/0-rocket-copy.jpg" in flagged and "rocket/rocket1.jpg" not in flagged
