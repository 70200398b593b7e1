"""`cnnlab labels`: the table, JSON, mapping files and --wide (the mapping itself: tests/imagedata/test_labels.py)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cnnlab.cli import app

runner = CliRunner()


def test_table() -> None:
    result = runner.invoke(app, ["labels", "cat", "crane", "blurfl"])
    assert result.exit_code == 0, result.output
    for text in ("wordnet", "281 tabby", "287 lynx", "ambiguous", "134 crane bird", "unmapped"):
        assert text in result.stdout
    assert "291 lion" not in result.stdout


def test_json_with_mapping(tmp_path: Path) -> None:
    path = tmp_path / "map.yml"
    path.write_text("crane: [517]\n")
    result = runner.invoke(app, ["labels", "dog", "crane", "--mapping", str(path), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    summary = [(r["name"], r["how"], len(r["indices"])) for r in rows]
    assert summary == [("dog", "wordnet", 118), ("crane", "mapping-file", 1)]
    assert rows[1]["classes"] == ["517 crane"]


def test_bad_mapping_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "map.yaml"
    path.write_text("crane: [blurfl]\n")
    result = runner.invoke(app, ["labels", "crane", "--mapping", str(path)])
    assert result.exit_code == 2
    assert "blurfl" in result.output


def test_wide_puts_the_notes_in_a_column() -> None:
    narrow = runner.invoke(app, ["labels", "blurfl"], env={"COLUMNS": "200"})
    wide = runner.invoke(app, ["labels", "blurfl", "--wide"], env={"COLUMNS": "200"})
    assert narrow.exit_code == 0 and wide.exit_code == 0, narrow.output + wide.output
    header = next(line for line in wide.stdout.splitlines() if "synset" in line)
    assert "note" in header
    assert "blurfl:" in narrow.stdout and "blurfl:" not in wide.stdout  # below the table / in it
