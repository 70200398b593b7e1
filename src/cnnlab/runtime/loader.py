""":func:`load_runtime`: a model name (or checkpoint, or ``.onnx`` file) on a backend, ready to run.

* ``torch``: :func:`cnnlab.models.load.load_torch` (every precision, channels_last, torch.compile).
* ``onnxruntime`` / ``openvino``: the model's cached ONNX export (:mod:`~cnnlab.runtime.artifacts`;
  an ``.onnx`` file is used as it is), opened with an explicit thread count
  (:mod:`~cnnlab.runtime.sessions`).
* ``...-int8``: the same, quantised to int8 with calibration images the caller gives (a sample
  of the images to be classified: :mod:`~cnnlab.runtime.quantize`).

:func:`prepare_runtime_file` does the slow part (export, calibration) once, so that ``bench`` can
run it in the parent and hand each worker a finished file (:func:`load_runtime_file`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cnnlab.errors import CnnlabError, ExportMismatchError, UsageError, WeightsIntegrityError
from cnnlab.models.files import is_checkpoint_file, is_onnx_file
from cnnlab.options import (
    Backend,
    ModelSource,
    Precision,
    Quantization,
    RuntimeChoice,
    RuntimeOptions,
    WeightsPolicy,
    parse_choice,
)
from cnnlab.progress import Progress
from cnnlab.runtime.artifacts import cached_export, onnx_spec, read_sidecar, sidecar
from cnnlab.runtime.base import EXTRAS, ExportedModel, Runtime, require
from cnnlab.runtime.quantize import FEW_CALIBRATION_IMAGES, quantized_file

if TYPE_CHECKING:
    import numpy as np

    from cnnlab.models.registry import ModelSpec


def effective_choice(name: str | Path, choice: RuntimeChoice | str) -> RuntimeChoice:
    """``choice``, except that an ``.onnx`` file asked to run on torch (the default) runs in onnxruntime."""
    choice = parse_choice(RuntimeChoice, choice, "backend")
    return RuntimeChoice.ONNXRUNTIME if choice is RuntimeChoice.TORCH and is_onnx_file(name) else choice


def check_installed(choice: RuntimeChoice | str, *, export: bool = True) -> None:
    """Fail now, naming the extra, if ``choice`` cannot run here (``export``: an ONNX export is needed too)."""
    choice = parse_choice(RuntimeChoice, choice, "backend")
    backend = choice.backend
    if backend is Backend.TORCH:
        return
    what = f"the {choice.value} backend"
    require("onnxruntime", EXTRAS[Backend.ONNXRUNTIME], what)  # exports are checked with it; int8 uses its quantiser
    if backend is Backend.OPENVINO:
        require("openvino", EXTRAS[Backend.OPENVINO], what)
    if export:
        require("onnx", EXTRAS[Backend.ONNXRUNTIME], what)
        require("onnxscript", EXTRAS[Backend.ONNXRUNTIME], what)


def prepare_runtime_file(source: ModelSource, choice: RuntimeChoice | str, *, calibration: Sequence[Path] = (),
                         progress: Progress | None = None) -> Path:
    """The ONNX file that ``choice`` runs for ``source``: an ``.onnx`` file as given, else the cached
    export; for an int8 choice, its int8 version calibrated on ``calibration``.

    Raises:
        UsageError: torch was asked for (it runs no files), the extra is missing, or int8 without images.
    """
    choice = parse_choice(RuntimeChoice, choice, "backend")
    if choice is RuntimeChoice.TORCH:
        raise UsageError("the torch backend runs the model itself, not an ONNX file")
    name = source.name
    remembered = remembered_runtime_file(source)
    check_installed(choice, export=not is_onnx_file(name) and remembered is None)
    if is_onnx_file(name):
        if source.weights is not None or source.policy is WeightsPolicy.RANDOM:
            raise UsageError(f"{name} is an ONNX file with its own weights: other weights and random weights "
                             "do not apply")
        path = Path(name)
        read_sidecar(path)  # a missing or foreign sidecar is reported before anything else
    elif remembered is not None:
        path = remembered
    else:
        random_weights = source.policy is WeightsPolicy.RANDOM
        if source.policy is WeightsPolicy.RANDOM_IF_MISSING and source.weights is None:
            from cnnlab.models.registry import get_spec
            from cnnlab.models.weights import locate_weights

            random_weights = locate_weights(get_spec(name), source.weights_dir).found is None
        path = cached_export(name, weights=source.weights, weights_dir=source.weights_dir,
                             random_weights=random_weights, download=source.download, progress=progress)
        if _rememberable(source):
            from cnnlab.runtime.export_index import remember_export

            remember_export(name, source.weights_dir, path, format=CLASSIFIER_FORMAT)
    if choice.quantization is Quantization.INT8 and not read_sidecar(path).get("quantization"):
        if not calibration:
            raise UsageError(f"the {choice.value} backend calibrates on your images: none were given")
        path = quantized_file(path, calibration, progress=progress)
    return path


#: The sidecar's ``format`` of a classifier export (:func:`cnnlab.models.export.export_model`).
CLASSIFIER_FORMAT = "onnx"


def _rememberable(source: ModelSource) -> bool:
    """A registry name with its pretrained weights found by the usual search (no file given, none random)."""
    return source.weights is None and source.policy is WeightsPolicy.PRETRAINED and not is_onnx_file(source.name)


def remembered_runtime_file(source: ModelSource) -> Path | None:
    """The cached classifier export of ``source`` when the export index vouches for it
    (:mod:`cnnlab.runtime.export_index`), or, for a training checkpoint, when its export is cached: found
    without importing torch, torchvision or onnx."""
    if not _rememberable(source):
        return None
    if is_checkpoint_file(source.name):
        from cnnlab.runtime.artifacts import cached_checkpoint_export

        return cached_checkpoint_export(source.name)
    from cnnlab.runtime.export_index import remembered_export

    return remembered_export(source.name, source.weights_dir, format=CLASSIFIER_FORMAT)


def load_runtime_file(path: Path, choice: RuntimeChoice | str, *, device: str = "auto", threads: int | None = None,
                      progress: Progress | None = None) -> ExportedModel:
    """Open an ONNX file (with its sidecar) in the backend of ``choice``. The model is named after its
    source model for a file of the export cache, after its path otherwise (the int8 version of a
    user's file, made in the cache, after that file's path); it is int8 when its
    sidecar says it was quantised."""
    from cnnlab.runtime.artifacts import exports_dir
    from cnnlab.runtime.cores import default_cpu_threads, default_workers
    from cnnlab.runtime.sessions import open_session

    choice = parse_choice(RuntimeChoice, choice, "backend")
    meta = read_sidecar(path)
    cache = exports_dir().resolve()
    name = str(path)
    if path.resolve().is_relative_to(cache):
        # the int8 version of the user's .onnx file keeps the file's name, like its fp32 row
        quantized = meta.get("quantization")
        source = quantized.get("source_file") if isinstance(quantized, dict) else None
        outside = isinstance(source, str) and bool(source) and not Path(source).resolve().is_relative_to(cache)
        name = str(source) if outside else str(meta["model"])
    spec = onnx_spec(path, meta, name=name)
    threads = threads or default_cpu_threads(default_workers("cpu"))
    run, provider = open_session(choice.backend, path, threads, device)
    check_graph(path, run, spec)
    on_gpu = provider.startswith(("CUDA", "Tensorrt"))
    runs_on = (device if device.startswith("cuda") else "cuda") if on_gpu else "cpu"
    quantization = meta.get("quantization") or {}
    if not isinstance(quantization, dict):
        raise WeightsIntegrityError(f"{sidecar(path)}: 'quantization' must be an object")
    used = quantization.get("calibration_images")
    used = used if isinstance(used, int) and not isinstance(used, bool) and used >= 0 else 0
    if quantization and used < FEW_CALIBRATION_IMAGES:
        (progress or Progress()).note(f"{spec.name}: int8 calibrated on only {used} images; its ranges may be poor",
                                      warning=True)
    weights_file = meta.get("weights_file")
    return ExportedModel(
        spec=spec, file=path, run=run, backend=choice.backend,
        quantization=Quantization.INT8 if quantization else Quantization.NONE, provider=provider,
        threads=threads, random_weights=bool(meta.get("random_weights")),
        weights_path=Path(weights_file) if isinstance(weights_file, str) and weights_file else None,
        details={"device": runs_on, **({"calibration_images": used} if quantization else {})},
    )


def check_graph(path: Path, run: Callable[[np.ndarray], np.ndarray], spec: ModelSpec) -> None:
    """Run the graph on black and white images of the sidecar's input size, alone and as a batch of two: it
    must take that size, give one logit per class of the sidecar, and one row per image of a batch (a
    hand-edited or mismatched sidecar, or a graph that ignores the batch dimension, fails here, not mid-run
    with one image's answer copied to the others)."""
    import numpy as np

    size = spec.preprocessing.crop_size
    meta = sidecar(path).name
    black = np.zeros((1, 3, size, size), dtype=np.uint8)
    white = np.full((1, 3, size, size), 255, dtype=np.uint8)
    try:
        logits = np.asarray(run(black))
    except Exception as exc:  # the runtimes raise their own exception types for shape and type errors
        raise WeightsIntegrityError(
            f"{path} does not run on a uint8 batch of {size}x{size} images, the input size its metadata file "
            f"{meta} gives: {_first_lines(exc)}") from exc
    if logits.ndim != 2 or logits.shape[0] != 1:  # openvino can answer a wrong input size with an empty batch
        raise WeightsIntegrityError(
            f"{path} does not run on a uint8 batch of {size}x{size} images, the input size its metadata file "
            f"{meta} gives: outputs of shape {list(logits.shape)} for one image")
    if logits.shape != (1, len(spec.categories)):
        raise WeightsIntegrityError(
            f"{path} gives outputs of shape {list(logits.shape)} for one image, but its metadata file "
            f"{meta} lists {len(spec.categories)} classes")
    try:
        alone = np.asarray(run(white))
        pair = np.asarray(run(np.concatenate([black, white])))
    except Exception as exc:  # a graph for a fixed batch of one: the runtime says why
        raise WeightsIntegrityError(f"{path} does not run on a batch of two images (a graph made for one image "
                                    f"at a time?): {_first_lines(exc)}") from exc
    if pair.shape != (2, len(spec.categories)):
        raise WeightsIntegrityError(f"{path} ignores the batch dimension: it gives outputs of shape "
                                    f"{list(pair.shape)} for a batch of two images")
    if _differ(logits[0], alone[0]) and not (_differ(pair[0], pair[1])):
        raise WeightsIntegrityError(f"{path} ignores the batch dimension: it tells a black image from a white one "
                                    "alone, but gives both the same outputs in one batch")


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two rows of logits differ by more than arithmetic noise (int8 or fused kernels included)."""
    import numpy as np

    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: a broken graph, said by the finiteness check
        scale = max(1.0, float(np.max(np.abs(a))), float(np.max(np.abs(b))))
        return bool(np.max(np.abs(a - b)) > 1e-3 * scale)


def _first_lines(exc: Exception) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return " ".join(lines)[:300] or type(exc).__name__


def load_runtime(source: ModelSource, runtime: RuntimeOptions, *, calibration: Sequence[Path] = (),
                 progress: Progress | None = None) -> Runtime:
    """``source`` on ``runtime.backend``, ready for :func:`cnnlab.runtime.inference.run_inference`
    (:func:`load_model` is its public form).

    An ``.onnx`` file runs in onnxruntime when the backend is torch (the default). Precision,
    channels-last and compile apply to the torch backend; the others run the exported fp32 graph (or
    its int8 version, calibrated on ``calibration``). ``runtime.threads`` sets the runtime's CPU
    threads (torch's too); default: the cores not used for decoding.

    Raises:
        UsageError: a torch-only precision on another backend, a missing extra, int8 without calibration images.
    """
    choice = effective_choice(source.name, runtime.backend)
    if choice is RuntimeChoice.TORCH:
        from cnnlab.models.load import load_torch

        return load_torch(source, runtime.to_run(), progress=progress is None or type(progress) is not Progress)
    if runtime.precision not in (Precision.FP32, Precision.AUTO):
        raise UsageError(f"precision {runtime.precision.value} applies to the torch backend; the {choice.value} "
                         "backend runs the exported graph as it is (fp32, or int8 for an -int8 backend)")
    path = prepare_runtime_file(source, choice, calibration=calibration, progress=progress)
    return load_runtime_file(path, choice, device=runtime.device, threads=runtime.threads, progress=progress)


def choose_backend(source: ModelSource, runtime: RuntimeOptions, *, progress: Progress | None = None,
                   ) -> tuple[RuntimeChoice, str]:
    """The fastest runtime that runs the same model (``--backend auto``), and why.

    On the CPU: ONNX Runtime when its extra is installed and the model's cached ONNX export exists or can be
    made now and passes its parity check against PyTorch (an export that does not reproduce the model is
    refused, and PyTorch runs it); ONNX Runtime runs these graphs several times faster than PyTorch eager
    on a CPU (``benchmarks/bench_predict.py``). On a GPU, and with options only PyTorch has (precision other
    than fp32, channels_last, compile): PyTorch. An ``.onnx`` file runs in ONNX Runtime.
    """
    from cnnlab.runtime.sessions import wants_gpu

    if is_onnx_file(source.name):
        return RuntimeChoice.ONNXRUNTIME, "an ONNX file runs in ONNX Runtime"
    if wants_gpu(runtime.device):  # auto: without importing torch where no GPU driver is installed
        return RuntimeChoice.TORCH, "PyTorch on cuda"
    if runtime.precision not in (Precision.FP32, Precision.AUTO) or runtime.channels_last or runtime.compile:
        return RuntimeChoice.TORCH, "options that only PyTorch runs (precision, channels_last or compile)"
    try:
        check_installed(RuntimeChoice.ONNXRUNTIME, export=remembered_runtime_file(source) is None)
    except UsageError:
        return RuntimeChoice.TORCH, f"PyTorch: ONNX Runtime is not installed ({EXTRAS[Backend.ONNXRUNTIME]} extra)"
    try:
        prepare_runtime_file(source, RuntimeChoice.ONNXRUNTIME, progress=progress)
    except (ExportMismatchError, WeightsIntegrityError) as exc:
        return RuntimeChoice.TORCH, f"PyTorch: the ONNX export does not reproduce the model ({_first_lines(exc)})"
    except CnnlabError:
        raise  # missing weights, an unknown model: PyTorch would fail the same way; said once, as it is
    except Exception as exc:  # noqa: BLE001 - the exporter failed: PyTorch runs the model itself
        return RuntimeChoice.TORCH, f"PyTorch: the ONNX export failed ({_first_lines(exc)})"
    return RuntimeChoice.ONNXRUNTIME, "ONNX Runtime on the CPU: the cached export passed its parity check"


def load_model(source: str | Path | ModelSource, runtime: RuntimeOptions | None = None, *,
               calibration: Sequence[Path] = (), progress: Progress | None = None) -> Runtime:
    """A classifier ready to run: a registry name, a ``cnnlab train`` checkpoint or an ``.onnx`` file.

    ``source`` is a name or path (its pretrained weights), or a :class:`~cnnlab.options.ModelSource`
    (weights file, weights folder, random weights, downloads); ``runtime`` a
    :class:`~cnnlab.options.RuntimeOptions` (``None``: the defaults). A model runs in PyTorch unless
    ``runtime.backend`` names ONNX Runtime or OpenVINO (its cached ONNX export; ``-int8``: quantised,
    calibrated on the ``calibration`` images); an ``.onnx`` file runs in ONNX Runtime unless OpenVINO is
    asked for. Either way the result takes a ``uint8`` batch and returns float32 logits
    (:class:`cnnlab.runtime.base.Runtime`). For the PyTorch module itself use
    :func:`cnnlab.models.load.load_torch`.
    """
    if not isinstance(source, ModelSource):
        source = ModelSource(name=str(source))
    return load_runtime(source, runtime or RuntimeOptions(), calibration=calibration, progress=progress)
