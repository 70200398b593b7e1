"""The documentation: its Python examples run, every command has a page, the README stays short.

The examples are run as a reader would run them: each ```python block of README.md and docs/**/*.md in a
fresh interpreter, in a folder holding ``photos/`` (the demo photos in class folders), with an empty weights
folder and a mirror that refuses every connection, so nothing is downloaded: the examples use the offline
model's real weights, and random weights for any other model. cnnlab's cache (ONNX exports) starts empty and
is kept from one example to the next, as on the reader's machine. A block preceded by a ``<!-- no-test -->``
line is not run (the line says why next to it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from cnnlab.cli import app

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
NO_TEST = "<!-- no-test"
#: Seconds one example may take; the slowest trains for one epoch on the demo photos.
EXAMPLE_TIMEOUT_S = 900

_FENCE = re.compile(r"^```python[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _pages() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def _python_blocks() -> list[tuple[str, str]]:
    """(``file:line`` id, code) of every ```python block not marked ``<!-- no-test -->``."""
    blocks: list[tuple[str, str]] = []
    for page in _pages():
        text = page.read_text(encoding="utf-8")
        for match in _FENCE.finditer(text):
            before = text[: match.start()].rstrip("\n").splitlines()
            if before and before[-1].lstrip().startswith(NO_TEST):
                continue
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{page.relative_to(ROOT)}:{line}", match.group(1)))
    return blocks


def _command_paths() -> list[tuple[str, ...]]:
    """Every command path of the CLI, e.g. ("bench",), ("weights", "fetch")."""
    group = typer.main.get_command(app)
    ctx = group.context_class(group)
    paths: list[tuple[str, ...]] = []
    for name in group.list_commands(ctx):  # type: ignore[attr-defined]
        command = group.get_command(ctx, name)  # type: ignore[attr-defined]
        if hasattr(command, "list_commands"):
            paths.extend((name, sub) for sub in command.list_commands(command.context_class(command)))
        else:
            paths.append((name,))
    return paths


@pytest.fixture(scope="module")
def demo_photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo photos in class folders, built once and copied into each example's folder.

    ``photos/`` is exactly what ``cnnlab demo`` leaves in ``demo-results/demo-data`` (class folders and
    SOURCES.csv), the folder the docs point readers to.
    """
    from cnnlab.imagedata.demo import build_demo_set

    return build_demo_set(tmp_path_factory.mktemp("demo") / "photos")  # with its SOURCES.csv, as demo leaves it


@pytest.fixture(scope="module")
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """cnnlab's cache (ONNX exports) for the examples of this test process, empty before the first of them.

    A reader who runs the examples one after the other has the exports the earlier ones made; so do the
    examples here: the first that needs an export makes it, the later ones use it.
    """
    return tmp_path_factory.mktemp("cache")


def test_the_examples_are_found() -> None:
    ids = [block_id for block_id, _ in _python_blocks()]
    assert any(i.startswith("README.md:") for i in ids), "README.md has no Python example"
    assert any(i.startswith("docs/library.md:") for i in ids), "docs/library.md has no Python example"


@pytest.mark.slow
@pytest.mark.parametrize(("block_id", "code"), _python_blocks(), ids=[b for b, _ in _python_blocks()])
def test_python_example_runs(block_id: str, code: str, demo_photos: Path, export_cache: Path,
                             tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(demo_photos, work / "photos")
    empty = tmp_path / "weights"
    empty.mkdir()
    env = {
        **os.environ,
        "CNNLAB_WEIGHTS_DIR": str(empty),
        "CNNLAB_WEIGHTS_MIRROR": "http://127.0.0.1:9/",  # the discard port: a download fails at once
        "CNNLAB_CACHE_DIR": str(export_cache),
        "TORCH_HOME": str(tmp_path / "torch"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONUNBUFFERED": "1",
    }
    result = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True,
                            timeout=EXAMPLE_TIMEOUT_S, check=False)
    assert result.returncode == 0, f"{block_id} failed:\n{code}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr[-4000:]}"


@pytest.mark.parametrize("path", _command_paths(), ids=" ".join)
def test_every_command_has_a_page_and_help(path: tuple[str, ...]) -> None:
    page = DOCS / "commands" / f"{path[0]}.md"
    assert page.is_file(), f"`cnnlab {path[0]}` has no page {page.relative_to(ROOT)}"
    assert re.search(r"cnnlab " + r" ".join(path) + r"\b", page.read_text(encoding="utf-8")), (
        f"`cnnlab {' '.join(path)}` does not appear on {page.relative_to(ROOT)}")
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: cnnlab " + " ".join(path) in result.output


def test_every_command_page_is_a_command() -> None:
    commands = {path[0] for path in _command_paths()}
    pages = {page.stem for page in (DOCS / "commands").glob("*.md")}
    assert pages <= commands, f"pages for commands that do not exist: {sorted(pages - commands)}"


def test_readme_is_short_and_links_pages_that_exist() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 160
    links = re.findall(r"\]\((docs/[^)#\s]+)", text)
    assert links, "README.md links no docs page"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, f"README.md links pages that do not exist: {missing}"
