"""Opening an ONNX file in ONNX Runtime or OpenVINO with an explicit thread count.

* ONNX Runtime: ``intra_op_num_threads`` threads, one inter-op thread, every graph optimisation,
  and no spin-waiting between runs: the inference loop decodes the next batch in the same process
  on small machines, and spinning threads took its CPU (``benchmarks/bench_backends.py`` measures it;
  figures in docs/benchmarks.md).
  On a GPU machine (``--device cuda``, or ``auto`` when torch sees CUDA) the execution providers
  are TensorRT (when this onnxruntime build has it; engines cached under the export cache), then
  CUDA, then the CPU; the provider that actually runs the graph is reported, since ONNX Runtime
  falls back to the CPU silently when the CUDA libraries are missing.
* OpenVINO: the CPU plugin, ``INFERENCE_NUM_THREADS`` threads, the latency hint (one stream: the
  loop runs one batch at a time) and fp32 arithmetic (``INFERENCE_PRECISION_HINT``: on CPUs with
  bf16 units OpenVINO would otherwise switch to bf16 on its own, and the fp32 row would not be
  fp32). An int8 file runs its quantised layers in int8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.errors import UsageError, WeightsIntegrityError
from cnnlab.options import Backend, parse_device
from cnnlab.runtime.base import EXTRAS, require

if TYPE_CHECKING:
    import numpy as np

Session = tuple[Callable[["np.ndarray"], "np.ndarray"], str]


def wants_gpu(device: str) -> bool:
    """``cuda``/``cuda:N``, or ``auto`` on a machine where torch sees a CUDA device."""
    text = parse_device(device)
    if text == "auto":
        from cnnlab.runtime.cores import no_gpu_here

        if no_gpu_here():  # known without importing torch (the ONNX Runtime path of predict needs none)
            return False
        import torch

        return bool(torch.cuda.is_available())
    return text.startswith("cuda")


def _device_index(device: str) -> int:
    _, _, index = parse_device(device).partition(":")
    return int(index) if index else 0


def onnxruntime_providers(available: list[str], device: str, engine_cache: Path) -> list[Any]:
    """The execution providers to ask for, best first."""
    if not wants_gpu(device):
        return ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" not in available:
        raise UsageError(f"device {device}: this onnxruntime has no CUDA execution provider (it has "
                         f"{', '.join(available)}); install onnxruntime-gpu instead of onnxruntime, or run on the CPU")
    index = _device_index(device)
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in available:
        providers.append(("TensorrtExecutionProvider", {"device_id": index, "trt_engine_cache_enable": True,
                                                        "trt_engine_cache_path": str(engine_cache)}))
    providers += [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    return providers


def onnxruntime_session(path: Path, threads: int, device: str) -> Session:
    """``(run, provider)`` for ``path`` in ONNX Runtime."""
    run_all, used = onnxruntime_outputs_session(path, threads, device)

    def run(images: np.ndarray) -> np.ndarray:
        return run_all(images)[0]

    return run, used


def onnxruntime_outputs_session(path: Path, threads: int, device: str) -> tuple[
        Callable[[np.ndarray], list[np.ndarray]], str]:
    """``(run, provider)`` for ``path`` in ONNX Runtime, ``run`` returning every output of the graph."""
    ort = require("onnxruntime", EXTRAS[Backend.ONNXRUNTIME], "--backend onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the CUDA provider's fallback warnings are reported below
    providers = onnxruntime_providers(ort.get_available_providers(), device, path.parent / "tensorrt")
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types: a truncated or foreign file
        raise unreadable(path, "onnxruntime", exc) from exc
    used = session.get_providers()[0]
    if wants_gpu(device) and used == "CPUExecutionProvider":
        raise UsageError(f"device {device}: onnxruntime could not start its CUDA provider (CUDA or cuDNN "
                         "libraries missing?) and would run on the CPU; ask for the CPU device to mean that")
    input_name = session.get_inputs()[0].name

    def run_all(images: np.ndarray) -> list[np.ndarray]:
        outputs: list[np.ndarray] = session.run(None, {input_name: images})
        return outputs

    return run_all, used


def openvino_session(path: Path, threads: int, device: str) -> Session:
    """``(run, provider)`` for ``path`` in OpenVINO's CPU plugin."""
    if parse_device(device).startswith("cuda"):
        raise UsageError("the openvino backend runs on the CPU (its GPU plugin is for Intel GPUs); use the CPU device, "
                         "or the onnxruntime backend for CUDA")
    ov = require("openvino", EXTRAS[Backend.OPENVINO], "--backend openvino")
    core = ov.Core()
    try:
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    except Exception as exc:  # openvino raises RuntimeError (and its own types) for files it cannot parse
        raise unreadable(path, "openvino", exc) from exc
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(images: np.ndarray) -> np.ndarray:
        result: np.ndarray = request.infer({0: images})[output]  # a copy: the next call may reuse the buffer
        return result

    return run, f"openvino CPU {ov.get_version().split('-')[0]}"


def unreadable(path: Path, runtime: str, exc: BaseException) -> WeightsIntegrityError:
    """The error for an ONNX file that ``runtime`` cannot open (its message's last meaningful line)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    detail = lines[-1] if lines else type(exc).__name__
    return WeightsIntegrityError(f"{runtime} cannot open {path} (truncated, or not an ONNX model?): {detail[:300]}")


def open_session(backend: Backend, path: Path, threads: int, device: str) -> Session:
    """``(run, provider)`` for ``path`` in ``backend`` (ONNX Runtime or OpenVINO)."""
    if backend is Backend.ONNXRUNTIME:
        return onnxruntime_session(path, threads, device)
    if backend is Backend.OPENVINO:
        return openvino_session(path, threads, device)
    raise UsageError(f"{backend.value} does not run ONNX files")
