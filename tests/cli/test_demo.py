"""`cnnlab demo` owns its output folder: it refuses a file, and a folder holding anything but an earlier demo,
before it copies a photo (found by review: `demo -o DATA` wrote its results into a data set)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from cnnlab.bench.demo import DEMO_DATA, run_demo
from cnnlab.cli import app
from cnnlab.errors import UsageError
from cnnlab.imagedata.demo import build_demo_set

runner = CliRunner()


def test_demo_refuses_a_file_and_a_folder_that_holds_something_else(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["demo", "-o", str(afile), "-q"])
    assert result.exit_code == 2 and "a file, not a folder" in result.stderr, result.output
    data = tmp_path / "data"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "1.jpg").write_bytes(b"x")
    result = runner.invoke(app, ["demo", "-o", str(data), "-q"])
    assert result.exit_code == 2 and "holds no earlier demo" in result.stderr and "(--overwrite)" in result.stderr
    assert sorted(p.name for p in data.iterdir()) == ["cat"]  # nothing copied, nothing written
    with pytest.raises(UsageError, match="holds no earlier demo"):
        run_demo(data)


def test_the_demo_set_is_never_built_through_a_link(tmp_path: Path) -> None:
    first = build_demo_set(tmp_path / "one" / DEMO_DATA)
    photo = next(p for p in first.rglob("*") if p.is_file() and p.name != "SOURCES.csv")
    elsewhere = tmp_path / "elsewhere.bin"
    elsewhere.write_bytes(b"secret")
    photo.unlink()
    photo.symlink_to(elsewhere)
    from cnnlab.errors import DatasetError

    with pytest.raises(DatasetError, match="link"):
        build_demo_set(first)
    assert elsewhere.read_bytes() == b"secret"
