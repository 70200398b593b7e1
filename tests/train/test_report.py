"""Issue 24 part 3: train's report.html: curves, confusion, per-class scores, the most confident mistakes and the
top losses beside their class-activation maps; self-contained, and drawn cleanly by a real browser."""

from __future__ import annotations

import base64
import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnlab.models.load import LoadedModel
from cnnlab.render.thumbnails import thumbnail_data_uri
from cnnlab.runtime.loader import load_model
from cnnlab.train import TrainConfig, TrainResult, fine_tune
from cnnlab.train.report import CAM_HINT, GALLERY_SIZE, REPORT_FILE, SplitPredictions, cam_layer, write_run_report
from tests.helpers.images import block_import, make_colours
from tests.helpers.runs import FAST

ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass
class Figure:
    """One picture of a gallery: its images' sources and caption."""

    sources: list[str]
    alts: list[str]
    caption: str


class _Page(HTMLParser):
    """Headings, every image source, the galleries' figures, list items and paragraphs of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.galleries: list[list[Figure]] = []
        self.bullets: list[str] = []
        self.paragraphs: list[str] = []
        self._text: str | None = None
        self._depth = 0  # of open <div>s
        self._gallery_depth: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div":
            self._depth += 1
            if a.get("class") == "cams":
                self._gallery_depth = self._depth
                self.galleries.append([])
        elif tag == "figure" and self._gallery_depth is not None:
            self.galleries[-1].append(Figure([], [], ""))
        elif tag == "img":
            self.images.append(a.get("src") or "")
            if self._gallery_depth is not None:
                self.galleries[-1][-1].sources.append(a.get("src") or "")
                self.galleries[-1][-1].alts.append(a.get("alt") or "")
        elif tag in ("h1", "h2", "h3", "li", "p", "figcaption"):
            self._text = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "div":
            if self._depth == self._gallery_depth:
                self._gallery_depth = None
            self._depth -= 1
        elif tag in ("h1", "h2", "h3", "li", "p", "figcaption") and self._text is not None:
            text, self._text = self._text, None
            if tag == "li":
                self.bullets.append(text)
            elif tag == "p":
                self.paragraphs.append(text)
            elif tag == "figcaption":
                if self._gallery_depth is not None:  # (not the curves' caption)
                    self.galleries[-1][-1].caption = text
            else:
                self.headings.append(text)

    def handle_data(self, data: str) -> None:
        if self._text is not None:
            self._text += data


def _page(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


@dataclass
class Run:
    result: TrainResult
    model: LoadedModel


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One small real run with validation and test splits (its report written by the run itself)."""
    data = make_colours(tmp_path_factory.mktemp("colours"), per_class=10, broken=False)
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path_factory.mktemp("run") / "r"),
                                   **{**FAST, "test_fraction": 0.3}))
    model = load_model(str(result.best_path))
    assert isinstance(model, LoadedModel)
    return Run(result, model)


def _test_files(result: TrainResult) -> list[tuple[Path, int]]:
    """The run's test files and their class ids, from its data_split.csv."""
    import csv

    rows = list(csv.DictReader((result.out / "data_split.csv").open(encoding="utf-8")))
    split = [r for r in rows if r["split"] == "test"]
    assert split, rows[:3]
    base = result.out
    files = []
    for r in split:
        path = Path(r["path"])
        path = path if path.is_absolute() else base / path
        files.append((path.resolve(), result.classes.index(r["label"])))
    return files


def _confused(result: TrainResult, wrong: dict[Path, tuple[int, float]]) -> SplitPredictions:
    """Test-split predictions that are right except for ``wrong``: file -> (predicted class, its logit)."""
    files = _test_files(result)
    logits = torch.full((len(files), len(result.classes)), -4.0)
    for i, (path, target) in enumerate(files):
        predicted, logit = wrong.get(path, (target, 4.0))
        logits[i, predicted] = logit
        if predicted != target:
            logits[i, target] = 0.0
    return SplitPredictions("test", [p for p, _ in files], logits, torch.tensor([t for _, t in files]))


def test_the_run_writes_a_self_contained_report(run: Run) -> None:
    out = run.result.out
    html = (out / REPORT_FILE).read_text(encoding="utf-8")
    page = _page(out / REPORT_FILE)
    assert "<script" not in html and "<link" not in html and "url(" not in html and "href=" not in html
    assert all(src.startswith("data:image/") for src in page.images) and page.images
    assert page.headings[0] == "cnnlab train: efficientnet_lite0.IMAGENET1K on 3 classes"
    for heading in ("Held-out figures", "Training curves", "Validation: confusion and per-class scores",
                    "Test: confusion and per-class scores", "Per class (test)", "Most confident mistakes (test)"):
        assert heading in page.headings, page.headings
    pngs = [src for src in page.images if src.startswith("data:image/png;base64,")]
    assert len(pngs) == 1  # curves.png
    assert base64.b64decode(pngs[0].split(",", 1)[1], validate=True) == (out / "curves.png").read_bytes()
    assert sum(len(g) for g in page.galleries) <= 2 * GALLERY_SIZE
    for gallery in page.galleries:  # every shown image beside its map (Grad-CAM, the cam extra is installed)
        assert all(len(f.sources) == 2 and f.alts[1].startswith("class-activation map of") for f in gallery)
        for f in gallery:
            for src in f.sources:
                assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(b"\xff\xd8")


def test_the_confused_pair_and_the_mistakes_are_of_the_right_files(run: Run, tmp_path: Path) -> None:
    """Two red test photos called blue (one surer than the other), one green called red."""
    files = _test_files(run.result)
    red = [p for p, t in files if run.result.classes[t] == "red"]
    green = [p for p, t in files if run.result.classes[t] == "green"]
    blue, red_id = run.result.classes.index("blue"), run.result.classes.index("red")
    wrong = {red[0]: (blue, 6.0), red[1]: (blue, 9.0), green[0]: (red_id, 2.0)}
    trains = [p.requires_grad for p in run.model.module.parameters()]
    write_run_report(run.result, [_confused(run.result, wrong)], run.model, tmp_path)
    assert [p.requires_grad for p in run.model.module.parameters()] == trains  # the maps leave the model as it was
    page = _page(tmp_path / REPORT_FILE)
    n_red = len(red)
    assert page.bullets[:2] == [f"red taken for blue: 2 of {n_red} images", f"green taken for red: 1 of {len(green)} images"]
    mistakes = page.galleries[0]
    assert [f.sources[0] for f in mistakes] == [thumbnail_data_uri(p) for p in (red[1], red[0], green[0])]
    assert mistakes[0].caption.startswith(f"red/{red[1].name}") and "predicted: blue" in mistakes[0].caption
    assert "true: green" in mistakes[2].caption and "predicted: red" in mistakes[2].caption
    top_losses = page.galleries[1]  # the other images: none of the mistakes again
    assert not {f.sources[0] for f in top_losses} & {f.sources[0] for f in mistakes}
    assert len(top_losses) == min(GALLERY_SIZE, len(files) - 3)


def test_a_run_without_mistakes_says_so(run: Run, tmp_path: Path) -> None:
    write_run_report(run.result, [_confused(run.result, {})], run.model, tmp_path)
    page = _page(tmp_path / REPORT_FILE)
    n = len(_test_files(run.result))
    assert f"No mistakes: the model classified every one of the {n} test images correctly." in page.paragraphs
    assert f"No two classes were confused: every one of the {n} images is right." in page.paragraphs
    assert len(page.galleries) == 1  # the top losses only


def test_without_the_cam_extra_the_report_still_writes_and_says_how(run: Run, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    block_import(monkeypatch, "pytorch_grad_cam")
    files = _test_files(run.result)
    write_run_report(run.result, [_confused(run.result, {files[0][0]: ((files[0][1] + 1) % 3, 5.0)})], run.model,
                     tmp_path)
    page = _page(tmp_path / REPORT_FILE)
    assert page.galleries and all(len(f.sources) == 1 for g in page.galleries for f in g)  # photos, no maps
    assert any(CAM_HINT in p and "cam extra" in p for p in page.paragraphs)


def test_class_activation_maps_look_at_the_last_convolutional_block() -> None:
    from torchvision.models import mobilenet_v3_small, resnet18

    x = torch.zeros(1, 3, 64, 64)
    found = cam_layer(resnet18(weights=None).eval(), x)
    assert found is not None and found[0] == "layer4"
    found = cam_layer(mobilenet_v3_small(weights=None).eval(), x)
    assert found is not None and found[0] == "features"
    found = cam_layer(resnet18(weights=None).eval(), torch.zeros(1, 3, 32, 32))  # layer4's maps are 1x1 there
    assert found is not None and found[0] == "layer3"
    assert cam_layer(nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, 2)), x) is None  # not convolutional


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
def test_report_renders_in_a_real_browser(run: Run, tmp_path: Path) -> None:
    """Headless Chromium at 1280 px: no console errors, every image decodes, no sideways scrolling; the report of
    a run with mistakes (so with both galleries). The screenshot is kept in ``$CNNLAB_TEST_ARTIFACTS``."""
    files = _test_files(run.result)
    wrong = {path: ((target + 1) % 3, 3.0 + i) for i, (path, target) in enumerate(files[:4])}
    (tmp_path / "page").mkdir()
    shutil.copy(run.result.out / "curves.png", tmp_path / "page")
    html = write_run_report(run.result, [_confused(run.result, wrong)], run.model, tmp_path / "page")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,2400"]
    run_ = functools.partial(subprocess.run, capture_output=True, text=True, timeout=120)
    artifacts = Path(os.environ.get("CNNLAB_TEST_ARTIFACTS", ROOT / "test-artifacts"))
    artifacts.mkdir(parents=True, exist_ok=True)
    shot = artifacts / "train-report.png"
    shown = run_(["chromium", *flags, "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", html.as_uri()])
    assert shot.is_file() and shot.stat().st_size > 20_000, shown.stderr[-2000:]
    assert [line for line in shown.stderr.splitlines() if ":CONSOLE" in line] == []
    probed = tmp_path / "probed.html"
    probed.write_text(html.read_text(encoding="utf-8").replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    dom = run_(["chromium", *flags, "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()]).stdout
    match = re.search(r'data-probe="(\d+)/(\d+) (\d+) (\d+)/(\d+)"', dom)
    assert match is not None, dom[-2000:]
    loaded, total, width, wide, boxes = map(int, match.groups())
    page = _page(html)
    assert total == len(page.images) == 1 + 2 * sum(len(g) for g in page.galleries) and loaded == total
    assert width <= 1280
    assert boxes == 3 and wide == 0  # held-out figures, the confusion matrix and the per-class table
