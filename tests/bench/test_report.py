"""report: every output file, a self-contained report.html, Markdown and HTML in step, light imports."""

from __future__ import annotations

import base64
import csv
import dataclasses
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from cnnlab.bench import (
    BenchConfig,
    BenchResult,
    MeasureOptions,
    ModelResult,
    bench_models,
    full_table,
    lab_table,
    summary_table,
    write_bench_outputs,
)
from cnnlab.bench.protocol import RunResult
from cnnlab.bench.result import SCHEMA_VERSION
from cnnlab.bench.tables import mapping_table, per_class_table
from cnnlab.imagedata.demo import build_demo_set

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MODEL = "efficientnet_lite0.IMAGENET1K"
SECTIONS = ["cnnlab bench results", "The lab's table", "All figures",
            "Are the differences real? (paired McNemar tests, top-1)", "Plots", "Most confident mistakes", MODEL,
            "Label mapping", "Per class", "Skipped files"]


class _Page(HTMLParser):
    """What the tests look at in report.html: headings, image sources, table headers, stylesheet links."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.table_headers: list[list[str]] = []
        self.links: list[dict[str, str | None]] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("h1", "h2", "h3"):
            self._in = tag
            self.headings.append("")
        elif tag == "thead":
            self.table_headers.append([])
        elif tag == "th":
            self._in = tag
            self.table_headers[-1].append("")
        elif tag == "img":
            self.images.append(dict(attrs).get("src") or "")
        elif tag == "link":
            self.links.append(dict(attrs))

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in in ("h1", "h2", "h3"):
            self.headings[-1] += data
        elif self._in == "th":
            self.table_headers[-1][-1] += data


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _markdown_headings(path: Path) -> list[str]:
    return [line.lstrip("#").strip() for line in path.read_text(encoding="utf-8").splitlines() if line.startswith("#")]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[BenchResult, dict[str, Path]]:
    """One real run of the offline model on the demo photos (one of them unreadable), with every output."""
    root = tmp_path_factory.mktemp("report")
    data = build_demo_set(root / "demo")
    (data / "coffee" / "bad.png").write_bytes(b"")
    measure = MeasureOptions(latency_repeats=3, throughput_repeats=3, warmup=1, batch_size=4, workers=0)
    result = bench_models(BenchConfig(data=data, models=["efficientnet_lite0"], measure=measure, isolate=False))
    return result, write_bench_outputs(result, root / "out")


def test_every_output_file_is_written(demo: tuple[BenchResult, dict[str, Path]]) -> None:
    _, files = demo
    expected = {"markdown", "html", "csv", "json", "skipped", "accuracy_vs_throughput", "memory", "per_class",
                f"confusion_{MODEL}", f"confusion_csv_{MODEL}", f"predictions_csv_{MODEL}"}
    assert set(files) == expected
    for key, path in files.items():
        assert path.is_file() and path.stat().st_size > 0, key
    out = files["html"].parent
    assert (out / "predictions" / f"{MODEL}.csv").is_file()
    (row,) = csv.DictReader(files["csv"].open(encoding="utf-8"))
    assert row["schema_version"] == str(SCHEMA_VERSION) and row["model"] == MODEL
    payload = json.loads(files["json"].read_text(encoding="utf-8"),
                         parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    assert payload["schema_version"] == SCHEMA_VERSION
    skipped = list(csv.DictReader(files["skipped"].open(encoding="utf-8")))
    assert [(Path(s["path"]).name, s["reason"], s["label"]) for s in skipped] == [("bad.png", "empty", "coffee")]


def test_report_html_is_self_contained(demo: tuple[BenchResult, dict[str, Path]]) -> None:
    _, files = demo
    html = files["html"].read_text(encoding="utf-8")
    page = _page(files["html"])
    assert page.links == [] and "<script" not in html and "url(" not in html
    assert "src=\"http" not in html and "src='http" not in html and "href=" not in html
    plots = [path for path in files.values() if path.suffix == ".png"]
    pngs = [src for src in page.images if src.startswith("data:image/png;base64,")]
    thumbnails = [src for src in page.images if src.startswith("data:image/jpeg;base64,")]
    assert len(pngs) == len(plots) == 4
    assert len(thumbnails) == 1  # the gallery: Grace Hopper, the one mistake (mortarboard, not military uniform)
    assert len(page.images) == len(pngs) + len(thumbnails)
    for src in pngs:
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_SIGNATURE)
    assert base64.b64decode(thumbnails[0].split(",", 1)[1], validate=True).startswith(b"\xff\xd8")


def test_markdown_and_html_show_the_same_sections(demo: tuple[BenchResult, dict[str, Path]]) -> None:
    _, files = demo
    headings = _markdown_headings(files["markdown"])
    assert headings == _page(files["html"]).headings == SECTIONS
    markdown = files["markdown"].read_text(encoding="utf-8")
    for key in ("accuracy_vs_throughput", "memory", "per_class", f"confusion_{MODEL}"):
        assert f"]({files[key].name})" in markdown  # figures linked next to results.md
    assert "No paired tests: they need two models with accuracy figures, and this run has 1" in markdown
    assert "empty: 1 (every file in skipped.csv)" in markdown


def test_tables_have_the_documented_columns(demo: tuple[BenchResult, dict[str, Path]]) -> None:
    result, files = demo
    lab = lab_table(result)
    assert lab[0] == ["", MODEL]
    assert [row[0] for row in lab[1]] == ["Top-1 accuracy [95% CI]", "Top-5 accuracy [95% CI]",
                                          "Time (s, whole set, end to end)", "Memory (MiB, peak process RSS increase)"]
    assert lab[1][0][1] == "0.88 [0.53, 0.98]"  # 7 of 8 scored photos, Wilson interval
    summary = summary_table(result)
    assert summary[0] == ["model", "top-1", "95% CI", "top-5", "time s", "img/s", "RSS MiB"]
    assert summary[1][0][:2] == ["efficientnet_lite0", "0.88"]
    full = full_table(result)
    assert full[0] == ["model", "top-1", "top-5", "ECE", "images/s (end to end)", "data s", "model s",
                       "latency b1 median / p90 (ms)", "throughput (img/s @ batch)", "params (M)",
                       "GMACs measured / published", "weights (MiB)", "memory (MiB)", "status"]
    mapping = mapping_table(result)
    assert mapping[0] == ["folder", "images", "how", "ImageNet classes", "note"]
    per_class = per_class_table(result)
    assert per_class[0] == ["class", "images", f"{MODEL} acc / prec"]
    assert dict((r[0], r[2]) for r in per_class[1])["astronaut"] == "not scored"
    tables = [lab, summary, full, mapping, per_class]
    for header, rows in tables:
        assert rows and all(len(row) == len(header) for row in rows)
        assert all(isinstance(cell, str) for row in rows for cell in row)
    # the HTML shows the same tables (the terminal's summary table is not in the files)
    assert _page(files["html"]).table_headers == [lab[0], full[0], mapping[0], per_class[0]]


def test_failed_models_and_missing_tests_are_explained(demo: tuple[BenchResult, dict[str, Path]],
                                                       tmp_path: Path) -> None:
    result, _ = demo
    failed = ModelResult(RunResult(model="alexnet", error="weights missing: <alexnet-owt-7be5be79.pth>"))
    with_failure = dataclasses.replace(result, models=[*result.models, failed])
    files = write_bench_outputs(with_failure, tmp_path, plots=False)
    assert not any(path.suffix == ".png" for path in files.values())
    headings = _markdown_headings(files["markdown"])
    assert headings == _page(files["html"]).headings == [*[s for s in SECTIONS if s != "Plots"], "Errors"]
    markdown = files["markdown"].read_text(encoding="utf-8")
    assert "- alexnet: weights missing: &lt;alexnet-owt-7be5be79.pth&gt;" in markdown  # no HTML in Markdown either
    html = files["html"].read_text(encoding="utf-8")
    assert "&lt;alexnet-owt-7be5be79.pth&gt;" in html and "<alexnet-owt" not in html  # text is escaped
    assert "data:image/png" not in html  # no plots; the gallery's thumbnail stays
    assert [row[2] for row in lab_table(with_failure)[1]] == ["error"] * 4
    rows = {r["model"]: r for r in csv.DictReader(files["csv"].open(encoding="utf-8"))}
    assert rows["alexnet"]["status"] == "error" and rows[MODEL]["status"] == "ok"


def test_the_overview_says_how_each_pytorch_row_ran(demo: tuple[BenchResult, dict[str, Path]], tmp_path: Path) -> None:
    """Layout and folding change speed, not predictions: a reader comparing runs sees which rows ran how, and a
    model with no batch norm to fold (AlexNet) is not counted as one left unfolded."""
    result, _ = demo
    (model,) = result.models

    def row(name: str, channels_last: bool | None, folded_bn: int | None) -> ModelResult:
        run = dataclasses.replace(model.run, model=name, spec={**model.run.spec, "name": name},
                                  channels_last=channels_last, folded_bn=folded_bn)
        return dataclasses.replace(model, run=run)

    rows = [row("efficientnet_lite0", True, 49), row("alexnet", False, 0), row("resnet18", None, None)]
    files = write_bench_outputs(dataclasses.replace(result, models=rows), tmp_path, plots=False)
    markdown = files["markdown"].read_text(encoding="utf-8")
    assert ("PyTorch rows in NCHW (alexnet) and channels-last (efficientnet_lite0), batch norms folded into their "
            "convolutions (efficientnet_lite0 49).") in markdown  # resnet18's row predates the record: not described


def test_models_whose_names_differ_only_in_non_ascii_get_their_own_files(
        demo: tuple[BenchResult, dict[str, Path]], tmp_path: Path) -> None:
    """Issue 27 item 9: runs/猫/best.pt and runs/犬/best.pt both made the stem runs_best.pt; the second
    model's predictions replaced the first's. Each model now has its own predictions and confusion files."""
    result, _ = demo
    (model,) = result.models
    names = ["runs/猫/best.pt", "runs/犬/best.pt"]
    models = [dataclasses.replace(model, run=dataclasses.replace(model.run, model=n, spec={**model.run.spec, "name": n}))
              for n in names]
    files = write_bench_outputs(dataclasses.replace(result, models=models), tmp_path, plots=True)
    predictions = sorted((tmp_path / "predictions").iterdir())
    confusions = sorted((tmp_path / "confusion").iterdir())
    assert len(predictions) == len(confusions) == 2 and len({p.name for p in predictions}) == 2
    assert len([k for k in files if k.startswith("confusion_csv_")]) == 2
    assert len([k for k in files if k.startswith("confusion_") and not k.startswith("confusion_csv_")]) == 2


def test_import_is_light() -> None:
    """Importing the report modules and their names loads neither the bench runner, torch, scipy nor matplotlib."""
    code = (
        "import sys, cnnlab.render\n"
        "from cnnlab.bench import full_table, lab_table, summary_table, write_bench_outputs\n"
        "import cnnlab.bench.report, cnnlab.render.html, cnnlab.render.markdown, cnnlab.bench.plots\n"
        "heavy = ('cnnlab.bench.runner', 'cnnlab.bench.result', 'torch', 'scipy', 'matplotlib')\n"
        "print(sorted(m for m in sys.modules if m in heavy or m.startswith(tuple(h + '.' for h in heavy))))\n"
    )
    env = {"PYTHONPATH": str(ROOT / "src"), "PATH": ""}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert done.stdout.strip() == "[]"


def test_template_ships_as_package_data() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = pyproject["tool"]["setuptools"]["package-data"]["cnnlab"]
    package = ROOT / "src" / "cnnlab"
    templates = [p.relative_to(package).as_posix() for p in (package / "render" / "templates").iterdir()]
    assert templates and all(any(fnmatch.fnmatch(t, pattern) for pattern in patterns) for t in templates)


_PROBE = """<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const loaded = images.filter((img) => img.complete && img.naturalWidth > 0).length;
  const boxes = Array.from(document.querySelectorAll(".table-box"));
  const wide = boxes.filter((box) => box.scrollWidth > box.clientWidth).length;
  document.body.dataset.probe = `${loaded}/${images.length} ${document.documentElement.scrollWidth} ${wide}/${boxes.length}`;
});
</script>"""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_report_renders_in_a_real_browser(demo: tuple[BenchResult, dict[str, Path]], tmp_path: Path) -> None:
    """Headless Chromium at 1280 px: no console errors, every image decodes, no sideways scrolling.

    The screenshot is kept in ``$CNNLAB_TEST_ARTIFACTS`` (default ``test-artifacts/``) for a person to look at.
    """
    _, files = demo
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400"]
    run = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120)
    artifacts = Path(os.environ.get("CNNLAB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "report.png"
    shown = run(["chromium", *flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}",
                 files["html"].as_uri()])
    assert shot.is_file() and shot.stat().st_size > 20_000, shown.stderr[-2000:]
    console = [line for line in shown.stderr.splitlines() if ":CONSOLE" in line]
    assert console == []


    def probe(html: Path) -> tuple[int, ...]:
        probed = tmp_path / f"probed-{html.parent.name}.html"  # the same page with a probe script appended
        probed.write_text(html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
        dom = run(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()]).stdout
        match = re.search(r'data-probe="(\d+)/(\d+) (\d+) (\d+)/(\d+)"', dom)
        assert match is not None, dom[-2000:]
        return tuple(map(int, match.groups()))

    loaded, total, width, wide, boxes = probe(files["html"])
    assert total == 5 and loaded == total  # 4 plots and 1 gallery thumbnail
    assert width <= 1280
    assert boxes >= 4 and wide == 0  # no table scrolls sideways
    # the widest case: a backend column, a random-weights row, a long checkpoint path and a long error
    result, _ = demo
    ok = result.models[0]
    random = ModelResult(dataclasses.replace(ok.run, random_weights=True, backend="onnxruntime",
                                             quantization="int8"))
    long_path = "/home/someone/experiments/2025-01-01-long-run-name/checkpoints/best_model_after_fine_tuning.pt"
    failed = ModelResult(RunResult(model=long_path, error="RuntimeError: " + "a very long message " * 20))
    crowded = dataclasses.replace(result, models=[ok, random, failed])
    crowded_files = write_bench_outputs(crowded, tmp_path / "crowded", plots=False)
    _, _, width, wide, boxes = probe(crowded_files["html"])
    assert width <= 1280
    assert boxes >= 4 and wide == 0, f"{wide} of {boxes} tables scroll sideways"


def test_the_report_names_the_fastest_runtime_measured(demo: tuple[BenchResult, dict[str, Path]],
                                                       tmp_path: Path) -> None:
    result, _ = demo
    ok = result.models[0]
    assert ok.run.throughput_ips
    faster = ModelResult(dataclasses.replace(ok.run, backend="onnxruntime", throughput_ips=ok.run.throughput_ips * 3))
    only_torch = write_bench_outputs(result, tmp_path / "one", plots=False)["markdown"].read_text(encoding="utf-8")
    assert "Fastest runtime measured" not in only_torch  # one runtime: nothing to compare
    both = write_bench_outputs(dataclasses.replace(result, models=[ok, faster]), tmp_path / "two", plots=False)
    text = both["markdown"].read_text(encoding="utf-8")
    assert "Fastest runtime measured" in text
    assert f"efficientnet_lite0.IMAGENET1K: onnxruntime, {faster.run.throughput_ips:.1f} images/s (3.00x torch)" in text


HOSTILE = '<script>alert("L")</script>'


def test_markdown_shows_names_as_text_never_as_html_or_extra_cells(
        demo: tuple[BenchResult, dict[str, Path]], tmp_path: Path) -> None:
    """results.md put class and model names raw: a class folder <script>alert("L")</script> was markup in any viewer
    that renders Markdown's inline HTML, and a | in a name split its table cell."""
    result, _ = demo
    (model,) = result.models
    hostile = f"{HOSTILE}|x"
    mappings = {(hostile if name == "astronaut" else name): m for name, m in result.mappings.items()}
    named = dataclasses.replace(model, run=dataclasses.replace(model.run, model=hostile, spec={**model.run.spec,
                                                                                                "name": hostile}))
    files = write_bench_outputs(dataclasses.replace(result, models=[named], mappings=mappings), tmp_path, plots=False)
    markdown = files["markdown"].read_text(encoding="utf-8")
    assert "<script" not in markdown and "</script>" not in markdown
    assert '&lt;script&gt;alert("L")&lt;/script&gt;\\|x' in markdown  # the name, as text, its pipe escaped
    for table in re.findall(r"(?:^\|.*\|\n)+", markdown, flags=re.MULTILINE):
        widths = {len(re.split(r"(?<!\\)\|", line)) for line in table.splitlines()}
        assert len(widths) == 1, table  # every row as many cells as the header: no name split a cell
