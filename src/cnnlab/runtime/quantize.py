"""int8 variants of exported ONNX files: static quantisation calibrated on the user's own images.

onnxruntime's ``quantize_static`` writes a QDQ graph: int8 weights per output channel, uint8
activations whose ranges (MinMax) come from running the fp32 model over a seeded sample of the
user's images. Calibration sets activation ranges only: it uses no labels, and ``bench`` then
measures the int8 model's accuracy on the whole set (the sample included) next to the fp32 one.
Before quantising, onnxruntime's pre-processing folds BatchNorm into the convolutions.

The same int8 file runs in ONNX Runtime and in OpenVINO, which executes QDQ graphs with its int8
kernels (OpenVINO's own quantiser, NNCF, was measured no more accurate on the photo set of
``benchmarks/bench_backends.py`` and pulls in more packages).

int8 files are cached like exports (:mod:`cnnlab.runtime.artifacts`), in a folder keyed by the
fp32 file's sha256, the calibration images (paths, sizes, modification times), the method and
the onnxruntime version; the sidecar says how the file was made.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.errors import CnnlabError, ImageDecodeError, OutputError, WeightsIntegrityError
from cnnlab.imagedata.hashes import file_sha256
from cnnlab.imagedata.preprocess import Preprocessing
from cnnlab.models.metadata import check_preprocessing
from cnnlab.options import DEFAULT_CALIBRATION_IMAGES, Backend
from cnnlab.progress import Progress
from cnnlab.runtime.artifacts import (
    cache_entry_ok,
    cache_stem,
    discard_entry,
    exports_dir,
    publish_entry,
    read_sidecar,
    sidecar,
)
from cnnlab.runtime.base import EXTRAS, require

#: Below this many usable calibration images the result is flagged as a weak calibration.
FEW_CALIBRATION_IMAGES = 16
METHOD = "onnxruntime quantize_static, QDQ: per-channel int8 weights, uint8 activations, MinMax calibration"
_BATCH = 8


def calibration_sample(paths: Sequence[Path], size: int = DEFAULT_CALIBRATION_IMAGES, seed: int = 0) -> list[Path]:
    """A seeded random sample of ``size`` files (all of them if there are fewer), in their original order."""
    if size < 1:
        raise CnnlabError(f"calibration needs at least one image, got {size}")
    chosen = sorted(random.Random(seed).sample(range(len(paths)), min(size, len(paths))))
    return [Path(paths[i]) for i in chosen]


def _calibration_key(fp32: Path, images: Sequence[Path]) -> str:
    ort = require("onnxruntime", EXTRAS[Backend.ONNXRUNTIME], "int8 quantisation")
    files = []
    for p in images:
        try:
            st = p.stat()
            files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        except OSError:
            files.append([str(p), None, None])
    data = {"model": file_sha256(fp32), "images": files, "method": METHOD, "onnxruntime": ort.__version__}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def quantized_file(fp32: Path, images: Sequence[Path], *, progress: Progress | None = None) -> Path:
    """The int8 version of the ONNX file ``fp32``, calibrated on ``images`` (made now if not cached).

    Raises:
        CnnlabError: none of ``images`` can be decoded, or quantisation fails.
        UsageError: onnxruntime is not installed.
    """
    meta = read_sidecar(fp32)
    pp = check_preprocessing(meta.get("preprocessing"), str(sidecar(fp32)))
    check_external_data(fp32)
    key = _calibration_key(fp32, images)
    stem = fp32.parent.name if fp32.name == "model.onnx" else cache_stem(fp32.stem)  # a long name: a short folder
    folder = exports_dir() / f"{stem}-int8-{key}"
    model = folder / "model.onnx"
    if cache_entry_ok(folder):
        return model
    discard_entry(folder)
    progress = progress or Progress()
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
    except OSError as exc:
        raise OutputError(f"cannot write to the export cache {folder.parent}: {exc.strerror or exc}") from None
    try:
        used = _quantize(fp32, tmp / "model.onnx", images, pp, progress)
        meta["quantization"] = {"method": METHOD, "calibration_images": used, "source_file": str(fp32)}
        sidecar(tmp / "model.onnx").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        publish_entry(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return model


def check_external_data(fp32: Path) -> None:
    """Refuse an ONNX file whose weights live in external data files that onnx will not read: a symbolic link, a
    path out of the model's folder, a file that is missing or not a regular file. onnx's checker refuses them
    half-way through quantisation with a bare ``ValidationError``; this says which file and why, first.

    Raises:
        WeightsIntegrityError: such an external data file, or a model file onnx cannot parse.
    """
    import os

    require("onnx", EXTRAS[Backend.ONNXRUNTIME], "int8 quantisation")
    import onnx

    try:
        model = onnx.load(str(fp32), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and onnx's own: not an ONNX file
        raise WeightsIntegrityError(f"{fp32} is not a readable ONNX file: {type(exc).__name__}: {exc}") from exc
    folder = fp32.parent
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((entry.value for entry in tensor.external_data if entry.key == "location"), "")
        where = folder / location
        problem = None
        if not location or os.path.isabs(location) or ".." in Path(location).parts:
            problem = "is not a file name inside the model's folder"
        elif where.is_symlink():
            problem = "is a symbolic link (onnx reads external weights only from regular files next to the model)"
        elif not where.is_file():
            problem = "does not exist" if not os.path.lexists(where) else "is not a regular file"
        if problem is not None:
            raise WeightsIntegrityError(f"int8 quantisation of {fp32}: the external data file {location!r} of its "
                                        f"weight {tensor.name!r} {problem}; put the data file itself next to the "
                                        "model")


def _quantize(fp32: Path, out: Path, images: Sequence[Path], pp: Preprocessing, progress: Progress) -> int:
    """Pre-process and quantise ``fp32`` into ``out``; returns the number of images used."""
    import numpy as np

    require("onnxruntime", EXTRAS[Backend.ONNXRUNTIME], "int8 quantisation")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    progress.start("calibrate", f"int8: calibrating on {len(images)} images", total=len(images))
    arrays = []
    for path in images:
        with contextlib.suppress(ImageDecodeError):  # an unusable file is simply not part of the calibration
            arrays.append(pp.load(path).numpy())
        progress.update("calibrate", advance=1)
    if not arrays:
        raise CnnlabError("int8 calibration: none of the calibration images could be read")
    batches = [np.stack(arrays[i:i + _BATCH]) for i in range(0, len(arrays), _BATCH)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(batches)

        def get_next(self) -> dict[str, Any] | None:
            batch = next(self.items, None)
            return None if batch is None else {"images": batch}

    prepared = out.with_name("prepared.onnx")
    try:
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    except Exception as exc:  # onnxruntime's quantiser fails in many ways; say which file
        raise CnnlabError(f"int8 quantisation of {fp32} failed: {type(exc).__name__}: {exc}") from exc
    finally:
        prepared.unlink(missing_ok=True)
    progress.finish("calibrate")
    return len(arrays)
