"""`cnnlab predict` with its defaults (``--backend auto``) against PyTorch eager (``--backend torch``), same run.

Each round runs both commands end to end (process start, model load, decode, inference) on the same
files, alternately, so machine load hits both alike; the ratio of the medians is the figure. It also
checks that both give the same top-1 class for every file.

Usage (from the project root):
    .venv/bin/python benchmarks/bench_predict.py [--models resnet50,efficientnet_lite0] [--rounds 3] [DIR]
DIR: images to predict (default: the demo photos, built into a temporary folder). A model whose pretrained
weights are not on this machine runs with random weights saved under its weights file's name in a weights
folder in the temporary directory (found as a user's would be, so the export is remembered as theirs is); its line says so:
speed only, though both runtimes must still agree on every top-1.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(cnnlab: str, data: str, model: str, backend: str | None, weights_dir: str | None) -> tuple[float, dict]:
    cmd = [cnnlab, "predict", data, "-m", model, "--json", "-q"] + (["--backend", backend] if backend else [])
    cmd += ["--weights-dir", weights_dir] if weights_dir else []
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-500:]}")
    return seconds, json.loads(done.stdout)


def random_weights_dir(model: str) -> str | None:
    """``None`` when ``model``'s pretrained weights are found; else a temporary folder holding random ones."""
    import torch

    from cnnlab.models.registry import get_spec
    from cnnlab.models.weights import locate_weights

    spec = get_spec(model)
    if locate_weights(spec).found is not None or not spec.weights_file:
        return None
    folder = Path(tempfile.gettempdir()) / "cnnlab-bench-predict-weights"  # one folder, reused: 100 MB a model
    folder.mkdir(exist_ok=True)
    if not (folder / spec.weights_file).is_file():
        torch.manual_seed(0)
        torch.save(spec.build(None).state_dict(), folder / spec.weights_file)
    return str(folder)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", nargs="?")
    ap.add_argument("--models", default="resnet50,efficientnet_lite0")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cnnlab = str(Path(sys.executable).with_name("cnnlab"))
    data = a.data
    if data is None:
        from cnnlab.imagedata.demo import build_demo_set

        data = str(build_demo_set(Path(tempfile.mkdtemp(prefix="bench-predict-")) / "photos"))
    for model in a.models.split(","):
        weights_dir = random_weights_dir(model)
        run(cnnlab, data, model, None, weights_dir)  # warm: the ONNX export is made and cached once, not timed
        times: dict[str, list[float]] = {"auto": [], "torch": []}
        outputs = {}
        for _ in range(a.rounds):
            for backend in ("auto", "torch"):
                seconds, result = run(cnnlab, data, model, None if backend == "auto" else backend, weights_dir)
                times[backend].append(seconds)
                outputs[backend] = result
        top1 = {b: [p["top"][0]["index"] for p in r["predictions"]] for b, r in outputs.items()}
        chosen = outputs["auto"]["runtime"].get("backend_choice", {}).get("backend")
        auto, torch_s = statistics.median(times["auto"]), statistics.median(times["torch"])
        label = model + (" (random weights)" if weights_dir else "")
        print(f"{label:20s} default ({chosen}) {auto:6.2f} s [{min(times['auto']):.2f}-{max(times['auto']):.2f}]  "
              f"torch eager {torch_s:6.2f} s [{min(times['torch']):.2f}-{max(times['torch']):.2f}]  "
              f"speed-up {torch_s / auto:4.2f}x  same top-1: {top1['auto'] == top1['torch']} "
              f"({len(top1['auto'])} files, load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
