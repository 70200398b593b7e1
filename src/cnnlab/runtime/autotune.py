"""Batch size and loader workers chosen by measuring: ``--batch-size auto`` / ``--workers auto``.

No fixed batch size is right for every model and machine: a model with large fully connected layers
(AlexNet) runs far faster in batches of 32 than of 8 on a small CPU while small convolutional models do
not care. So :func:`choose_batch_and_workers` decodes the first few images and runs the model on a few
candidate batches, inside a time bound, and records where the time goes (decode seconds against model seconds
per image). Loader processes decode for a GPU model; a CPU model's batches are decoded by threads of its own
process, taking turns with it (:func:`choose_workers`; ``benchmarks/bench_decode_threads.py`` compares the two).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab.progress import Progress

if TYPE_CHECKING:
    import torch

    from cnnlab.runtime.base import Runtime

#: Candidate batch sizes per device type, smallest first (the largest that fits the images is the last tried).
CANDIDATE_BATCHES = {"cpu": (8, 16, 32), "cuda": (32, 64, 128, 256)}
#: Seconds the whole choice may take (decode sample and model timings together), by default.
DEFAULT_AUTO_BUDGET_S = 4.0
#: Images decoded to measure the decode time (fewer when the time bound is reached first).
DECODE_SAMPLE = 8
#: A larger batch is kept only when it is at least this much faster per image (else the smaller one wins:
#: less memory, earlier first results).
MIN_GAIN = 0.05


@dataclass
class AutoChoice:
    """The batch size and loader workers a run uses, and the evidence they were chosen on."""

    batch_size: int
    workers: int
    #: Whether each was measured (``True``) or given by the caller.
    batch_auto: bool = False
    workers_auto: bool = False
    #: Seconds to decode and preprocess one image in this process (the mean over the sample).
    decode_s_per_image: float | None = None
    decoded_images: int = 0
    #: Model seconds per image at each batch size tried (keys: batch sizes as strings, for JSON).
    model_s_per_image: dict[str, float] = field(default_factory=dict)
    #: Decode time as a share of decode + model time per image, serially (the chosen batch).
    data_share: float | None = None
    cores: int = 1
    seconds: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_workers(decode_s: float | None, model_s: float | None, *, cores: int, device_type: str) -> tuple[int, str]:
    """Loader processes for a run whose images take ``decode_s`` to decode and ``model_s`` in the model
    (seconds per image, serially), and why.

    A GPU model leaves the CPU cores to decoding processes. A CPU model gets none: decoding in processes
    beside it costs it more than their share of the cores (a descheduled model thread stalls the others at
    every parallel region), so each batch is decoded by this process's threads on every core while the model
    waits (:func:`cnnlab.runtime.batches.decode_in_threads`), which can only tie with perfect overlap and beat it
    as measured (``benchmarks/bench_decode_threads.py``).
    """
    from cnnlab.runtime.cores import default_workers

    if device_type == "cuda":
        return default_workers("cuda"), "the model runs on the GPU: the CPU cores decode"
    if decode_s is None or model_s is None:
        return 0, "no image decoded in the sample: decoding in this process"
    share = f"decoding is {decode_s / (decode_s + model_s):.0%} of the time per image"
    if cores < 2:
        return 0, f"one core: {share}, taking turns with the model"
    return 0, f"{share}: it takes turns with the model, in {cores} threads of this process"


def _decode_sample(model: Runtime, paths: Sequence[Path], *, fast_decode: bool, seconds: float,
                   ) -> tuple[list[torch.Tensor], float | None]:
    """Decode the first images (up to :data:`DECODE_SAMPLE`, within ``seconds``): the tensors and the mean
    seconds per decoded image."""
    images = []
    spent = 0.0
    for path in paths[:DECODE_SAMPLE * 2]:
        t0 = time.perf_counter()
        try:
            images.append(model.preprocessing.load(path, fast_decode=fast_decode))
        except Exception:  # noqa: BLE001 - an unreadable file is the loop's to report; the sample skips it
            continue
        finally:
            spent += time.perf_counter() - t0
        if len(images) >= DECODE_SAMPLE or spent > seconds:
            break
    return images, (spent / len(images) if images else None)


def _timed_call(model: Runtime, batch: torch.Tensor) -> float:
    """Seconds per image of one call of ``model`` on ``batch`` (results copied back, as the loop does)."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        model(batch).cpu()
        return (time.perf_counter() - t0) / len(batch)


def choose_batch_and_workers(model: Runtime, paths: Sequence[Path], *, batch_size: int | None = None,
                             workers: int | None = None, fast_decode: bool = True,
                             budget_s: float = DEFAULT_AUTO_BUDGET_S, progress: Progress | None = None,
                             task: str = "auto") -> AutoChoice:
    """The batch size and loader workers for running ``model`` over ``paths``: each given value kept, each
    ``None`` measured on the first images within about ``budget_s`` seconds (shown as task ``task``).

    The batch size is the candidate (:data:`CANDIDATE_BATCHES`, at most the number of images, rounded up to
    the smallest candidate) with the fewest model seconds per image (a larger one must be :data:`MIN_GAIN`
    faster); every candidate is tried while its timing fits the time bound, even after one that did not gain
    (AlexNet's 16 looked no faster than 8, its 32 was 1.2-1.4x faster), and timed again in interleaved rounds
    while time is left, the best timing of each kept (one timing moves by tens of percent on a busy machine).
    The workers: :func:`choose_workers`.
    """
    import torch

    from cnnlab.runtime.cores import available_cores

    progress = progress or Progress()
    started = time.perf_counter()
    deadline = started + budget_s
    device = model.device
    kind = device.type if device.type in CANDIDATE_BATCHES else "cpu"
    cores = available_cores()
    progress.start(task, f"{model.name}: choosing batch size and loader workers", total=None)
    try:
        images, decode_s = _decode_sample(model, paths, fast_decode=fast_decode, seconds=budget_s * 0.3)
        progress.update(task, info=f"decode {decode_s * 1e3:,.0f} ms/image" if decode_s else "no image decoded")
        crop = model.preprocessing.crop_size
        if batch_size is not None:
            candidates: tuple[int, ...] = (batch_size,)
        else:
            allowed = CANDIDATE_BATCHES[kind]
            candidates = tuple(b for b in allowed if b <= max(allowed[0], len(paths))) or allowed[:1]
        timings: dict[str, float] = {}
        batches: dict[int, torch.Tensor] = {}
        for b in candidates:
            # a candidate costs a warm-up and a timed call: start it only when that fits the bound (a slow model
            # stops at a smaller batch), judged from the best rate so far
            if timings and time.perf_counter() + 2 * b * min(timings.values()) > deadline + budget_s / 2:
                break
            if images:
                batch = torch.stack([images[i % len(images)] for i in range(b)])
            else:
                batch = torch.randint(0, 256, (b, 3, crop, crop), dtype=torch.uint8)
            batch = batch.to(device)
            try:
                _timed_call(model, batch)  # warm-up: the first call at a shape builds its kernels
                timings[str(b)] = _timed_call(model, batch)
            except torch.cuda.OutOfMemoryError:
                break
            batches[b] = batch
            progress.update(task, info=f"batch {b}: {1 / timings[str(b)]:,.1f} img/s")
        # more rounds, the candidates interleaved so that a passing disturbance does not decide; the best kept
        for b, batch in [*batches.items()] * 2:
            if time.perf_counter() + b * timings[str(b)] > deadline:
                break
            timings[str(b)] = min(timings[str(b)], _timed_call(model, batch))
        best_b, best_s = candidates[0], math.inf
        for b in batches:
            if timings[str(b)] < best_s * (1 - MIN_GAIN):
                best_b, best_s = b, timings[str(b)]
        if batch_size is not None:
            best_b = batch_size
        model_s = timings.get(str(best_b))
        if workers is None:
            chosen_workers, reason = choose_workers(decode_s, model_s, cores=cores, device_type=kind)
        else:
            chosen_workers, reason = workers, "given"
        share = decode_s / (decode_s + model_s) if decode_s is not None and model_s else None
        return AutoChoice(batch_size=best_b, workers=chosen_workers, batch_auto=batch_size is None,
                          workers_auto=workers is None, decode_s_per_image=decode_s, decoded_images=len(images),
                          model_s_per_image=timings, data_share=share, cores=cores,
                          seconds=time.perf_counter() - started, reason=reason)
    finally:
        progress.finish(task)
