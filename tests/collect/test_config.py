"""CollectConfig and FetchConfig: parsed once, when made; a setting that cannot work is refused there."""

from __future__ import annotations

from pathlib import Path

import pytest

import cnnlab.collect
from cnnlab.collect import CollectConfig, CollectError, FetchConfig
from cnnlab.errors import UsageError
from cnnlab.options import EngineName


def test_strings_become_the_types_internals_take(tmp_path: Path) -> None:
    config = CollectConfig(str(tmp_path / "d"), [" cat ", "dog"], 3, engine="DDG",  # type: ignore[arg-type]
                           queries={"cat": ["tabby", "tabby", "house cat"], "dog": "puppy"},  # type: ignore[dict-item]
                           urls=None, from_folder=None)
    assert config.out == tmp_path / "d" and config.classes == ("cat", "dog")
    assert config.engine is EngineName.DDG and config.engine_name == "ddg"
    assert config.queries == {"cat": ("tabby", "house cat"), "dog": ("puppy",)}


def test_the_input_names_the_engine(tmp_path: Path) -> None:
    assert CollectConfig(tmp_path, urls=str(tmp_path / "u.txt")).engine_name == "urls"  # type: ignore[arg-type]
    assert CollectConfig(tmp_path / "out", from_folder=tmp_path / "in").engine_name == "folder"


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"engine": "altavista"}, UsageError, "unknown engine 'altavista'"),
        ({"classes": ["../up"]}, CollectError, "folder name"),
        ({"classes": "cat"}, CollectError, "list of names"),
        ({"threads": 0}, CollectError, "threads"),
        ({"per_class": -1}, CollectError, "per class"),
        ({"near_dup_threshold": -2}, CollectError, "near-duplicate threshold"),
        ({"max_aspect_ratio": float("inf")}, CollectError, "aspect ratio"),
        ({"urls": "u.txt", "from_folder": "photos"}, CollectError, "not both"),
        ({"fetch": {"timeout": 1}}, CollectError, "FetchConfig"),
    ],
)
def test_settings_that_cannot_work_are_refused(tmp_path: Path, changes: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        CollectConfig(tmp_path / "d", **{"classes": ["cat"], **changes})
    assert not (tmp_path / "d").exists()


def test_fetch_limits() -> None:
    assert FetchConfig(timeout=3600, host_delay=0).attempt_deadline == 4 * 3600
    for bad in ({"retries": -1}, {"per_host": 0}, {"max_bytes": 0}, {"timeout": 0}, {"host_delay": -1},
                {"retries": True}):
        with pytest.raises(CollectError):
            FetchConfig(**bad)  # type: ignore[arg-type]


def test_the_job_is_one_function_under_two_names() -> None:
    assert cnnlab.collect.collect_images is cnnlab.collect.run


def test_a_folder_imported_into_itself_is_refused(tmp_path: Path) -> None:
    """Found by review: ``collect --from-folder X -o X`` imported its own copies, every image twice."""
    (tmp_path / "src" / "red").mkdir(parents=True)
    for out in (tmp_path / "src", tmp_path / "src" / "copy", tmp_path):
        with pytest.raises(CollectError, match="one holds the other"):
            CollectConfig(out=out, from_folder=tmp_path / "src")
    assert CollectConfig(out=tmp_path / "elsewhere", from_folder=tmp_path / "src").from_folder == tmp_path / "src"


def test_files_beside_the_class_folders_are_not_imported(tmp_path: Path) -> None:
    """The demo set (and many downloads) keeps a SOURCES.csv or README beside its class folders."""
    from cnnlab.collect.sources import folder_candidates

    (tmp_path / "red").mkdir()
    (tmp_path / "red" / "a.png").write_bytes(b"x")
    (tmp_path / "SOURCES.csv").write_text("path,label\n")
    assert [c.label for c in folder_candidates(tmp_path)] == ["red"]
    (tmp_path / "stray.jpg").write_bytes(b"x")
    with pytest.raises(CollectError, match="images at its top level"):
        folder_candidates(tmp_path)
