"""``report.html`` of a training run: curves, confusion, per-class scores, and the images it got most wrong.

What fastai users get from ``plot_top_losses``, ``most_confused`` and Grad-CAM, as one self-contained page
in the run folder (no external resources, images inline as ``data:`` URIs), drawn with the shared rendering
of bench's report (:mod:`cnnlab.render`: the one Jinja environment, its blocks, its thumbnails).

* the training curves (``curves.png``), the held-out figures;
* for the validation and test splits, the confusion matrix (as a table; with many classes only the
  most confused pairs) and a per-class table (images, precision, recall);
* on the split the run is reported on (test, else validation), the most confident mistakes and the
  other images with the highest loss, at most :data:`GALLERY_SIZE` each: the photo beside a class-activation
  map of the predicted class (Grad-CAM, :mod:`pytorch_grad_cam`, extra ``cam``, on the last convolutional
  block; :func:`cam_layer`). Without the extra the page says how to get the maps; a run without mistakes
  says so.

The maps cost an inference pass per shown image and a backward pass through the head (the gradient is taken
at the mapped layer's output); the report reuses the predictions the run has already made, so its time is
that of at most ``2 * GALLERY_SIZE`` images and the page.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from cnnlab.outputs import atomic_write
from cnnlab.render.blocks import Block, Bullets, Figure, Heading, Paragraph, Table
from cnnlab.render.html import render_template
from cnnlab.render.naming import printable
from cnnlab.render.thumbnails import THUMBNAIL_SIZE, thumbnail_data_uri

if TYPE_CHECKING:
    from cnnlab.models.load import LoadedModel
    from cnnlab.train.result import TrainResult

#: The report's file name in the run folder.
REPORT_FILE = "report.html"
#: Its template in ``cnnlab/render/templates/``.
TEMPLATE = "train_report.html.j2"
#: Images in each gallery (most confident mistakes, top losses): the page stays small and the maps quick.
GALLERY_SIZE = 6
#: Classes up to which the confusion matrix is shown whole (beyond, the most confused pairs).
MAX_MATRIX_CLASSES = 20
#: Most confused pairs listed per split.
MOST_CONFUSED = 5
#: How to get the class-activation maps when the extra is missing.
CAM_HINT = "pip install 'cnnlab[cam]'"

SPLIT_TITLES = {"val": "Validation", "test": "Test"}


@dataclass(frozen=True)
class SplitPredictions:
    """The best model's logits on one held-out split: row ``i`` is ``paths[i]`` (the files that decoded)."""

    name: str
    paths: list[Path]
    logits: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if not len(self.paths) == len(self.logits) == len(self.targets):
            raise ValueError(f"{self.name}: {len(self.paths)} paths for {len(self.logits)} logits "
                             f"and {len(self.targets)} targets")


@dataclass(frozen=True)
class Example:
    """One image of a gallery: what it is, what the model said, and how sure it was."""

    path: Path
    true: int
    predicted: int
    #: Probability of the predicted class, and of the true class.
    confidence: float
    true_probability: float
    #: Cross-entropy of the image (``-log`` of the true class's probability).
    loss: float


@dataclass(frozen=True)
class CamItem:
    """A gallery picture: the photo, its class-activation map ("" without one) and a few lines."""

    photo: str
    overlay: str
    caption: list[str]
    name: str


@dataclass(frozen=True)
class CamGallery:
    """Photos each beside its class-activation map (``data:`` URIs made here, so the template embeds them as is)."""

    items: list[CamItem]
    kind: ClassVar[str] = "cam_gallery"


#: What the page is made of: the shared report blocks and the photo-and-map gallery.
PageBlock = Block | CamGallery


@dataclass
class Maps:
    """Class-activation maps of a few images (``None`` where none could be made) and why there are none."""

    overlays: dict[Path, np.ndarray] = field(default_factory=dict)
    note: str | None = None
    layer: str | None = None


def examples(split: SplitPredictions, size: int = GALLERY_SIZE) -> tuple[list[Example], list[Example]]:
    """The most confident mistakes (surest first) and the other images with the highest loss (highest first),
    at most ``size`` each: the second list never repeats an image of the first."""
    if not len(split.targets):
        return [], []
    probs = split.logits.float().softmax(dim=1)
    confidence, predicted = probs.max(dim=1)
    true_p = probs.gather(1, split.targets[:, None])[:, 0]
    losses = torch.nn.functional.cross_entropy(split.logits.float(), split.targets, reduction="none")
    every = [Example(split.paths[i], int(split.targets[i]), int(predicted[i]), float(confidence[i]),
                     float(true_p[i]), float(losses[i])) for i in range(len(split.targets))]
    wrong = sorted((e for e in every if e.predicted != e.true), key=lambda e: (-e.confidence, str(e.path)))[:size]
    shown = {e.path for e in wrong}
    highest = sorted((e for e in every if e.path not in shown), key=lambda e: (-e.loss, str(e.path)))[:size]
    return wrong, highest


def most_confused(matrix: Sequence[Sequence[int]], classes: Sequence[str], limit: int = MOST_CONFUSED
                  ) -> list[tuple[str, str, int, int]]:
    """fastai's ``most_confused``: ``(true, predicted, count, images of true)`` for the largest off-diagonal
    cells, largest first (ties by class order)."""
    cells = [(int(matrix[t][p]), t, p) for t in range(len(classes)) for p in range(len(classes))
             if t != p and matrix[t][p]]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[t], classes[p], n, int(sum(matrix[t]))) for n, t, p in cells[:limit]]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _overview(result: TrainResult) -> list[Block]:
    start = "random weights (testing only)" if result.random_weights else "pretrained weights"
    lines = [f"Model: {result.arch} from {start}, on {len(result.classes)} classes; {result.device}, "
             f"{result.precision}.",
             f"Images: {result.n_train} training, {result.n_val} validation, {result.n_test} test "
             f"({result.split_source})."]
    if result.best_epoch is not None:
        lines.append(f"Best epoch: {result.best_epoch} ({result.selection}).")
    if result.weight_mix == 0:
        lines.append("best.pt holds the linear probe's weights: no share of the fine-tuned ones did better on "
                     "validation.")
    elif result.weight_mix is not None and result.weight_mix < 1:
        lines.append(f"best.pt holds {result.weight_mix:g} of the best epoch's weights and "
                     f"{1 - result.weight_mix:g} of the linear probe's (WiSE-FT, chosen on validation).")
    if result.refit is not None:
        lines.append(f"Its head was then refitted by logistic regression on {result.refit['images']} training and "
                     f"validation images; its validation figures are out of fold ({result.refit['folds']} folds).")
    if result.zero_shot and result.zero_shot.get("val_acc") is not None:
        lines.append(f"The untouched pretrained model scores {_pct(result.zero_shot['val_acc'])} on the same "
                     f"{result.zero_shot.get('n', '?')} validation images (zero-shot through the ImageNet classes).")
    return [Heading(f"cnnlab train: {printable(result.arch)} on {len(result.classes)} classes", level=1),
            *[Paragraph(printable(line)) for line in lines]]


def _figures(result: TrainResult, reports: dict[str, dict[str, Any]]) -> list[Block]:
    header = ["split", "images", "top-1 [95% CI]", "loss", "ECE"]
    rows = []
    for name, rep in reports.items():
        ci = rep.get("top1_ci") or [None, None]
        interval = f" [{_num(ci[0], 2)}, {_num(ci[1], 2)}]" if ci[0] is not None else ""
        rows.append([SPLIT_TITLES.get(name, name), str(rep.get("n", 0)), _pct(rep.get("top1")) + interval,
                     _num(rep.get("loss"), 4), _num(rep.get("ece"))])
    if not rows:
        return [Heading("Held-out figures"), Paragraph("No validation or test images: no held-out figures.")]
    note = ("The test split took no part in training or in choosing the epoch." if "test" in reports else
            "No test split: the validation split also chose the best epoch, so its figures are optimistic.")
    return [Heading("Held-out figures"), Table(header, rows), Paragraph(note)]


def _curves(out: Path) -> list[Block]:
    path = out / "curves.png"
    if not path.is_file():
        return []
    return [Heading("Training curves"),
            Figure("curves", "Loss and accuracy per epoch (epoch 0: the linear probe)", path)]


def _split_section(name: str, rep: dict[str, Any], classes: Sequence[str]) -> list[Block]:
    title = SPLIT_TITLES.get(name, name)
    blocks: list[Block] = [Heading(f"{title}: confusion and per-class scores")]
    matrix = rep.get("confusion_matrix", {}).get("matrix") or []
    labels = [printable(c) for c in classes]
    confused = most_confused(matrix, labels) if matrix else []
    if confused:
        blocks.append(Bullets([f"{t} taken for {p}: {n} of {total} images" for t, p, n, total in confused]))
    elif rep.get("n"):
        blocks.append(Paragraph(f"No two classes were confused: every one of the {rep['n']} images is right."))
    if matrix and len(classes) <= MAX_MATRIX_CLASSES:
        rows = [[labels[t], *[str(v) for v in matrix[t]], str(sum(matrix[t]))] for t in range(len(classes))]
        blocks += [Heading(f"Confusion matrix ({title.lower()}): rows are the true class, columns the predicted",
                           level=3),
                   Table(["true \\ predicted", *labels, "images"], rows)]
    elif matrix:
        blocks.append(Paragraph(f"{len(classes)} classes: the whole matrix is in metrics.json "
                                f"({name}.confusion_matrix)."))
    per_class = rep.get("per_class") or []
    if per_class:
        blocks += [Heading(f"Per class ({title.lower()})", level=3),
                   Table(["class", "images", "precision", "recall"],
                         [[printable(c["name"]), str(c["support"]), _pct(c.get("precision")), _pct(c.get("recall"))]
                          for c in per_class])]
    return blocks


def _gallery(items: list[Example], classes: Sequence[str], maps: Maps) -> CamGallery:
    shown = []
    for e in items:
        overlay = maps.overlays.get(e.path)
        shown.append(CamItem(
            photo=thumbnail_data_uri(e.path),
            overlay=_jpeg_data_uri(overlay) if overlay is not None else "",
            caption=[f"true: {printable(classes[e.true])} ({e.true_probability:.0%})",
                     f"predicted: {printable(classes[e.predicted])} ({e.confidence:.0%})",
                     f"loss: {e.loss:.3g}"],
            name=printable(f"{e.path.parent.name}/{e.path.name}" if e.path.parent.name else e.path.name),
        ))
    return CamGallery(shown)


def _galleries(split: SplitPredictions | None, classes: Sequence[str], maps: Maps) -> list[PageBlock]:
    if split is None:
        return []
    title = SPLIT_TITLES.get(split.name, split.name).lower()
    wrong, highest = examples(split)
    blocks: list[PageBlock] = [Heading(f"Most confident mistakes ({title})")]
    if wrong:
        blocks += [Paragraph("The wrong predictions the model was surest of: often a wrong or ambiguous label, an "
                             "image of two things, or a real weakness. Beside each photo, where the model looked "
                             "for the class it predicted."),
                   _gallery(wrong, classes, maps)]
    else:
        blocks.append(Paragraph(f"No mistakes: the model classified every one of the {len(split.targets)} "
                                f"{title} images correctly."))
    if highest:
        blocks += [Heading(f"Top losses ({title})"),
                   Paragraph("The other images with the highest loss (the least probability on their true "
                             "class): the next mistakes, or right answers the model was least sure of."),
                   _gallery(highest, classes, maps)]
    if maps.note:
        blocks.append(Paragraph(maps.note))
    elif maps.layer and (wrong or highest):
        blocks.append(Paragraph(f"Class-activation maps: Grad-CAM of the predicted class on layer {maps.layer} "
                                "(red: what raised that class's score), over the centre crop the model saw."))
    return blocks


def _notes(result: TrainResult) -> list[Block]:
    blocks: list[Block] = []
    if result.warnings:
        blocks += [Heading("Warnings"), Bullets([printable(w) for w in result.warnings])]
    if result.skipped:
        blocks += [Heading("Skipped files"),
                   Paragraph(f"{len(result.skipped)} files could not be used (every one in metrics.json).")]
    return blocks


def report_blocks(result: TrainResult, reports: dict[str, dict[str, Any]], shown: SplitPredictions | None,
                  maps: Maps, out: Path) -> list[PageBlock]:
    """What report.html says, in order. ``reports``: the evaluation reports of the held-out splits
    (:func:`cnnlab.train.loop.evaluation_report`); ``shown``: the split whose images the galleries show."""
    blocks: list[PageBlock] = [*_overview(result), *_figures(result, reports), *_curves(out)]
    for name, rep in reports.items():
        blocks += _split_section(name, rep, result.classes)
    blocks += _galleries(shown, result.classes, maps)
    blocks += _notes(result)
    return blocks


def _jpeg_data_uri(rgb: np.ndarray, size: int = THUMBNAIL_SIZE) -> str:
    from PIL import Image

    img = Image.fromarray(rgb)
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                     Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def cam_layer(module: nn.Module, sample: torch.Tensor) -> tuple[str, nn.Module] | None:
    """The layer Grad-CAM looks at: the last convolutional block, found by one forward pass of ``sample``.

    The module (not the network itself) whose forward pass ends last among those that run once and give
    a spatial map (N, C, H, W with H*W > 1): the last stage of a ResNet (``layer4``), ``features`` of
    torchvision's EfficientNet and MobileNet, timm's ``bn2`` after ``conv_head``. At a small image size where
    the last maps are 1x1, the last block with larger maps. ``None`` when there is none (a vision transformer).
    """
    calls: dict[str, int] = {}
    finished: list[tuple[str, bool]] = []
    names = {m: n for n, m in module.named_modules() if n}

    def hook(mod: nn.Module, args: Any, output: Any) -> None:
        name = names[mod]
        calls[name] = calls.get(name, 0) + 1
        spatial = isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1
        finished.append((name, spatial))

    handles = [m.register_forward_hook(hook) for m in names]
    try:
        with torch.no_grad():
            module(sample)
    finally:
        for h in handles:
            h.remove()
    for name, spatial in reversed(finished):
        if spatial and calls[name] == 1:
            return name, module.get_submodule(name)
    return None


def class_activation_maps(model: LoadedModel, images: Sequence[Example]) -> Maps:
    """Grad-CAM overlays of the predicted class for ``images``, over the centre crop the model saw. Never raises
    for want of the extra or a network it cannot read: :attr:`Maps.note` says why there are none."""
    if not images:
        return Maps()
    try:
        from pytorch_grad_cam import GradCAM
        from pytorch_grad_cam.utils.image import show_cam_on_image
    except ImportError:
        return Maps(note=f"Class-activation maps need the cam extra (pytorch-grad-cam): {CAM_HINT}.")
    from cnnlab.errors import ImageDecodeError

    prep = model.preprocessing
    crops: list[torch.Tensor] = []
    kept: list[Example] = []
    for e in images:
        try:
            crops.append(prep.load(e.path))
        except ImageDecodeError:
            continue
        kept.append(e)
    if not kept:
        return Maps()
    module = model.module
    was_training = module.training
    module.eval()
    batch = torch.stack(crops)
    x = prep.normalize(batch.to(model.device), torch.float32)
    grads = [(p, p.requires_grad) for p in module.parameters()]
    handle = None
    try:
        found = cam_layer(module, x[:1])
        if found is None:
            return Maps(note="No class-activation maps: the network has no convolutional map larger than 1x1.")
        name, layer = found
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        # The gradient is needed at the layer's output only: the layers below run as in inference (no
        # weight gradients, no graph), and the backward pass goes through the head alone.
        for p, _ in grads:
            p.requires_grad_(False)
        handle = layer.register_forward_hook(lambda _m, _a, output: output.detach().requires_grad_(True).clone())
        with torch.enable_grad(), GradCAM(model=module, target_layers=[layer]) as cam:
            masks = cam(input_tensor=x, targets=[ClassifierOutputTarget(e.predicted) for e in kept])
    except Exception as exc:  # noqa: BLE001 - the report must not fail a finished run over a network Grad-CAM cannot read
        return Maps(note=f"No class-activation maps: Grad-CAM failed on this network ({type(exc).__name__}: {exc}).")
    finally:
        if handle is not None:
            handle.remove()
        for p, wanted in grads:
            p.requires_grad_(wanted)
        module.train(was_training)
    rgb = batch.permute(0, 2, 3, 1).numpy().astype(np.float32) / 255.0
    overlays = {e.path: show_cam_on_image(rgb[i], masks[i], use_rgb=True, image_weight=0.55)
                for i, e in enumerate(kept)}
    return Maps(overlays=overlays, layer=name)


def render_report(blocks: Sequence[PageBlock]) -> str:
    """The blocks as one self-contained page (``templates/train_report.html.j2``)."""
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "cnnlab train report")
    return render_template(TEMPLATE, blocks=list(blocks), title=title)


def write_run_report(result: TrainResult, splits: Sequence[SplitPredictions], model: LoadedModel | None,
                     out: Path) -> Path:
    """Write ``out/report.html`` for a finished run: ``splits`` are the best model's predictions on the
    held-out splits (:func:`cnnlab.train.session.finish_run` has them at hand), ``model`` the best model
    for the class-activation maps (``None``: none). The galleries show the test split, else validation."""
    from cnnlab.train.loop import evaluation_report

    reports = {s.name: evaluation_report(s.logits, s.targets, result.classes) for s in splits}
    by_name = {s.name: s for s in splits}
    shown = by_name.get("test") or by_name.get("val")
    maps = Maps()
    if shown is not None and model is not None:
        wrong, highest = examples(shown)
        maps = class_activation_maps(model, [*wrong, *highest])
    html = render_report(report_blocks(result, reports, shown, maps, out))
    return atomic_write(out / REPORT_FILE, printable(html))
