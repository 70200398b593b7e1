"""Feature extractors in ONNX Runtime (for ``cnnlab review``): one graph, two outputs, features and logits.

:func:`export_features` wraps the PyTorch model as ``cnnlab export`` does (a ``uint8`` batch in, the
normalisation inside the graph) and taps the input of the classifier head that
:func:`cnnlab.models.checkpoint.find_head` finds: the tensor the PyTorch path records with a forward
pre-hook (:func:`cnnlab.runtime.inference.run_inference` with ``features=True``), pooled the same way (a
1x1-convolution head's maps averaged over space). The graph's outputs are ``features`` (N, C) and
``logits`` (N, classes), so one forward pass gives both. After writing, the file is run in ONNX
Runtime on a seeded random batch of another size and compared with PyTorch: logits within the
export tolerance, features within the same tolerance times their largest magnitude; otherwise
:class:`~cnnlab.models.export.ExportMismatchError` is raised and nothing is kept.

The file is cached like the classifier exports (:func:`cnnlab.runtime.artifacts.cached_export`
with ``features=True``), in a folder of its own (``<name>-features-<key>``): its key differs from
the classifier export's. :func:`load_feature_model` opens it as an :class:`ExportedFeatureModel`,
a :class:`~cnnlab.runtime.Runtime` (called on a batch it gives the logits) with
:meth:`~ExportedFeatureModel.features_and_logits`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import CnnlabError, OutputError
from cnnlab.options import DEFAULT_EXPORT_TOLERANCE, Backend, Quantization
from cnnlab.progress import Progress
from cnnlab.runtime.artifacts import ExportVariant
from cnnlab.runtime.base import EXTRAS, ExportedModel, require

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnlab.models.load import LoadedModel

#: The export cache's ``format`` for feature extractors (part of the cache key; bump when the graph changes).
FEATURES_FORMAT = "onnx-features-2"
OUTPUTS = ("features", "logits")


@dataclass
class ExportedFeatureModel(ExportedModel):
    """A feature-extractor export in ONNX Runtime: called on a batch it gives the logits, like any
    :class:`~cnnlab.runtime.Runtime`; :meth:`features_and_logits` gives both outputs of one pass."""

    run_all: Callable[[np.ndarray], list[np.ndarray]] | None = field(default=None, repr=False)

    def features_and_logits(self, batch_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 features (N, C) and logits (N, classes) of a ``uint8`` batch, on the CPU."""
        import numpy as np
        import torch

        assert self.run_all is not None
        outputs = self.run_all(np.ascontiguousarray(batch_uint8.cpu().numpy()))
        return (torch.from_numpy(np.asarray(outputs[0], dtype=np.float32)),
                torch.from_numpy(np.asarray(outputs[1], dtype=np.float32)))


def _pooled(x: torch.Tensor) -> torch.Tensor:
    """As :func:`cnnlab.runtime.inference._pooled`: (N, C) as it is, (N, C, H, W) averaged over space."""
    return x.flatten(2).mean(2) if x.ndim > 2 else x.flatten(1)


def _wrapper(loaded: LoadedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(graph, head)``: the uint8 classifier whose head is tapped, returning (features, logits)."""
    from torch import nn

    from cnnlab.models.checkpoint import find_head
    from cnnlab.models.export import UInt8Classifier

    module = loaded.module.float().to("cpu").eval()
    head_name, head = find_head(module, loaded.spec.num_classes)

    class Tap(nn.Module):
        """The head, keeping what it receives (in a list: not a module attribute the exporter tracks)."""

        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x)
            out: torch.Tensor = self.inner(x)
            return out

    tap = Tap(head)
    module.set_submodule(head_name, tap)
    classifier = UInt8Classifier(module, loaded.preprocessing)

    class FeaturesAndLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.classifier = classifier

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            tap.seen.clear()
            logits = self.classifier(images)
            features = _pooled(tap.seen[-1]).float()
            tap.seen.clear()
            return features, logits

    return FeaturesAndLogits().eval(), head


def export_features(loaded: LoadedModel, path: Path, *, tolerance: float = DEFAULT_EXPORT_TOLERANCE,
                    check_batch: int = 3) -> dict[str, Any]:
    """Write the feature-extractor ONNX file of ``loaded`` (fp32, CPU) and its sidecar; returns the sidecar.

    Raises:
        ExportMismatchError: ONNX Runtime's outputs differ from PyTorch's by more than ``tolerance``.
        CnnlabError: the export failed; OutputError: the file cannot be written.
    """
    import numpy as np
    import torch

    from cnnlab.errors import ExportMismatchError
    from cnnlab.models.export import first_that_works, onnx_exporters, refusal, sample_batch, write_onnx

    require("onnxscript", EXTRAS[Backend.ONNXRUNTIME], "the ONNX export")
    ort = require("onnxruntime", EXTRAS[Backend.ONNXRUNTIME], "the ONNX export")
    graph, head = _wrapper(loaded)
    pp = loaded.preprocessing
    check = sample_batch(pp, check_batch, seed=0)
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
    try:
        with torch.inference_mode():  # the reference: the PyTorch path's hook and logits
            _, ref_logits = graph(check)
            ref_features = _pooled(seen[-1]).float()
            probe = graph(torch.zeros(1, 3, pp.crop_size, pp.crop_size, dtype=torch.uint8))
    finally:
        hook.remove()
    ref_f, ref_l = ref_features.numpy(), ref_logits.float().numpy()

    def made_with(exporter: str) -> tuple[float, float]:
        try:
            write_onnx(graph, sample_batch(pp, 2, seed=1), path, list(OUTPUTS), exporter=exporter)
        except CnnlabError:
            raise
        except OSError as exc:
            path.unlink(missing_ok=True)
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
        except Exception as exc:  # exporters fail in many ways; say which model
            path.unlink(missing_ok=True)
            raise CnnlabError(f"ONNX export of {loaded.name}'s feature extractor failed: {type(exc).__name__}: "
                              f"{exc}") from exc
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            features, logits = session.run(list(OUTPUTS), {"images": check.numpy()})
        except Exception as exc:  # ONNX Runtime refuses the graph (a batch size fixed at tracing, an unknown op)
            path.unlink(missing_ok=True)
            raise ExportMismatchError(f"the feature export of {loaded.name} does not run on a batch of {check_batch} "
                                      f"({refusal(exc)})") from exc
        if features.shape != ref_f.shape or logits.shape != ref_l.shape:
            path.unlink(missing_ok=True)
            raise ExportMismatchError(f"the feature export of {loaded.name} gives shapes {features.shape}, "
                                      f"{logits.shape}; PyTorch gives {ref_f.shape}, {ref_l.shape}")
        diff_l = float(np.abs(logits - ref_l).max())
        diff_f = float(np.abs(features - ref_f).max())
        scale_f = max(1.0, float(np.abs(ref_f).max()))
        if not (diff_l <= tolerance and diff_f <= tolerance * scale_f):
            path.unlink(missing_ok=True)
            raise ExportMismatchError(f"the feature export of {loaded.name} differs from PyTorch by up to "
                                      f"{diff_f:.3g} (features) and {diff_l:.3g} (logits); tolerance {tolerance:g}")
        return diff_f, diff_l

    exporter, (diff_f, diff_l) = first_that_works(onnx_exporters(graph), made_with, path)
    spec = loaded.spec
    meta: dict[str, Any] = {
        "model": loaded.name, "format": FEATURES_FORMAT, "source": spec.source,
        "random_weights": loaded.random_weights,
        "weights_file": str(loaded.weights_path) if loaded.weights_path else None,
        "spec": {"arch": spec.arch, "num_params": sum(p.numel() for p in loaded.module.parameters()),
                 "gmacs": spec.gmacs, "acc1": spec.acc1, "acc5": spec.acc5, "license": spec.license},
        "classes": list(loaded.categories), "preprocessing": pp.to_dict(),
        "input": {"name": "images", "dtype": "uint8", "layout": "NCHW, RGB",
                  "shape": ["N", 3, pp.crop_size, pp.crop_size]},
        "output": [{"name": "features", "dtype": "float32", "shape": ["N", int(ref_f.shape[1])]},
                   {"name": "logits", "dtype": "float32", "shape": ["N", len(loaded.categories)]}],
        "check": {"batch": check_batch, "max_abs_diff_features": diff_f, "max_abs_diff_logits": diff_l,
                  "tolerance": tolerance},
        "exporter": exporter,
        # PyTorch's outputs for a black image: loading compares them, so damaged weights in the
        # external data file (model.onnx.data, not covered by the cache's size record) are noticed
        "probe": {"image": "zeros", **{k: [round(float(v), 6) for v in t.float()[0]] for k, t in zip(OUTPUTS, probe)}},
    }
    path.with_name(path.name + ".json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


#: The feature extractor as a kind of cached export (:func:`cnnlab.runtime.artifacts.cached_export`).
FEATURES_VARIANT = ExportVariant(name="features", format=FEATURES_FORMAT, description="feature extractor",
                                 export=lambda loaded, path: export_features(loaded, path))


def load_feature_model(name: str, *, weights_dir: str | Path | None = None, random_weights: bool = False,
                       download: bool = True, device: str = "cpu", threads: int | None = None,
                       progress: Progress | None = None) -> ExportedFeatureModel:
    """``name`` (a registry name or training checkpoint) as a cached feature-extractor export in ONNX Runtime.

    Raises:
        UsageError: onnxruntime (or, to export, onnx/onnxscript) is not installed.
        ExportMismatchError, CnnlabError: what the export raises; what :func:`cnnlab.models.load.load_model` raises.
    """

    from cnnlab.errors import WeightsIntegrityError
    from cnnlab.options import RuntimeChoice
    from cnnlab.runtime.artifacts import cached_export, discard_entry
    from cnnlab.runtime.cores import default_cpu_threads, default_workers
    from cnnlab.runtime.export_index import remember_export, remembered_export
    from cnnlab.runtime.loader import check_installed

    def export() -> Path:
        check_installed(RuntimeChoice.ONNXRUNTIME)
        made = cached_export(name, weights_dir=weights_dir, random_weights=random_weights, download=download,
                             progress=progress, variant=FEATURES_VARIANT)
        if not random_weights:
            remember_export(name, weights_dir, made, format=FEATURES_FORMAT)
        return made

    threads = threads or default_cpu_threads(default_workers("cpu"))
    path = None if random_weights else remembered_export(name, weights_dir, format=FEATURES_FORMAT)
    if path is not None:
        check_installed(RuntimeChoice.ONNXRUNTIME, export=False)
    try:
        path = path or export()
        meta, spec, run_all, provider = _open(path, threads, device)
    except WeightsIntegrityError as exc:  # a damaged cache entry (its data file, say): export it once more
        if path is None:
            raise
        discard_entry(path.parent)
        if progress is not None:
            progress.note(f"exporting {name}'s feature extractor again: {exc}", warning=True)
        path = export()
        meta, spec, run_all, provider = _open(path, threads, device)

    def run(images: np.ndarray) -> np.ndarray:
        return run_all(images)[1]

    on_gpu = provider.startswith(("CUDA", "Tensorrt"))
    weights_file = meta.get("weights_file")
    return ExportedFeatureModel(
        spec=spec, file=path, run=run, backend=Backend.ONNXRUNTIME, quantization=Quantization.NONE, provider=provider,
        threads=threads, random_weights=bool(meta.get("random_weights")),
        weights_path=Path(weights_file) if isinstance(weights_file, str) and weights_file else None,
        details={"device": "cuda" if on_gpu else "cpu", "outputs": list(OUTPUTS)}, run_all=run_all,
    )


def _open(path: Path, threads: int, device: str) -> tuple[dict[str, Any], Any, Callable[[np.ndarray], list[np.ndarray]], str]:
    """``(sidecar, spec, run_all, provider)`` of a cached feature export, checked on a black image.

    Raises:
        WeightsIntegrityError: the file does not open or run, gives no features and logits, or
            gives other logits for a black image than PyTorch did when it was exported.
    """
    import numpy as np

    from cnnlab.errors import WeightsIntegrityError
    from cnnlab.runtime.artifacts import onnx_spec, read_sidecar
    from cnnlab.runtime.sessions import onnxruntime_outputs_session

    meta = read_sidecar(path)
    spec = onnx_spec(path, meta, name=str(meta["model"]))
    run_all, provider = onnxruntime_outputs_session(path, threads, device)
    size = spec.preprocessing.crop_size
    try:
        outputs = run_all(np.zeros((1, 3, size, size), dtype=np.uint8))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise WeightsIntegrityError(f"{path} does not run on a {size}x{size} uint8 image: {exc}") from exc
    if len(outputs) < 2 or np.asarray(outputs[1]).shape != (1, spec.num_classes):
        raise WeightsIntegrityError(f"{path} does not give features and {spec.num_classes} logits")
    probe: dict[str, Any] = meta["probe"] if isinstance(meta.get("probe"), dict) else {}
    same = True
    for i, key in enumerate(OUTPUTS):  # loose (a GPU rounds differently): damaged weights move them by far more
        try:
            expected = np.asarray(probe.get(key), dtype=np.float32).reshape(-1)
            got = np.asarray(outputs[i], dtype=np.float32).reshape(-1)
            same = same and expected.size > 0 and got.shape == expected.shape and \
                bool(np.all(np.abs(got - expected) <= 0.01 * max(1.0, float(np.abs(expected).max()))))
        except (TypeError, ValueError):
            same = False
    if not same:
        raise WeightsIntegrityError(f"{path} gives other outputs for a black image than the model it was exported "
                                    "from (damaged weights?)")
    return meta, spec, run_all, provider
