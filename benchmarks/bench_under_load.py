"""bench's PyTorch figures quiet and with one CPU-bound process beside them, alternating, in one run.

    python benchmarks/bench_under_load.py                     # efficientnet_lite0 and resnet50, 3 rounds
    python benchmarks/bench_under_load.py --models resnet50 --rounds 2 --images 64

Each round runs ``cnnlab bench`` with its defaults on the same synthetic 500x375 JPEGs (smooth noise, as
``../shared/checks/bench_vs_plain_loop.py`` makes them) once on the quiet machine, then once more while
``python -c "while True: pass"`` runs (one core of two taken: the fair share is a 2x drop). Weights are
RANDOM (speed does not depend on them). Prints, per model and round, the end-to-end evaluation images/s and
the model-only throughput quiet -> loaded with their ratio, and what each run's results.json said of the
machine (``busy``); last, the spread of the quiet runs of each model (their max/min and the median's
+- share), the figure issue 23's "within +-10 %" goal is about.
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


def make_jpegs(root: Path, n: int, w: int = 500, h: int = 375) -> Path:
    """``n`` JPEGs in two class folders: smooth random colour fields, seeded."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n // 2):
            small = (rng.random((h // 16, w // 16, 3)) * 255).astype(np.uint8)
            Image.fromarray(small).resize((w, h), Image.BICUBIC).save(root / c / f"{i:04d}.jpg", quality=90)
    return root


def bench(data: Path, model: str, out: Path) -> tuple[float, float, bool | None]:
    """``(evaluation images/s, model-only images/s, busy)`` of one ``cnnlab bench`` run with its defaults."""
    cnnlab = str(Path(sys.executable).with_name("cnnlab"))
    subprocess.run([cnnlab, "bench", str(data), "-m", model, "--random-weights", "-o", str(out), "--overwrite",
                    "-q", "--no-plots"], check=True, capture_output=True)
    result = json.loads((out / "results.json").read_text())
    run = result["models"][0]["run"]
    return run["eval_images"] / run["eval_total_s"], run["throughput_ips"], result["environment"]["machine"].get("busy")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,resnet50")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=96)
    args = parser.parse_args()
    print(f"cnnlab bench defaults, RANDOM weights, {args.images} JPEGs of 500x375; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    quiet: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cnnlab-under-load-") as tmp:
        work = Path(tmp)
        data = make_jpegs(work / "jpegs", args.images)
        for r in range(args.rounds):
            for model in [m for m in args.models.split(",") if m]:
                q = bench(data, model, work / "quiet")
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                time.sleep(2)  # the hog on its core before the run samples the machine
                try:
                    loaded = bench(data, model, work / "loaded")
                finally:
                    hog.kill()
                    hog.wait()
                time.sleep(2)
                quiet.setdefault(model, []).append(q[0])
                print(f"round {r} {model}: evaluation {q[0]:.1f} -> {loaded[0]:.1f} img/s ({q[0] / loaded[0]:.2f}x), "
                      f"model-only {q[1]:.1f} -> {loaded[1]:.1f} img/s ({q[1] / loaded[1]:.2f}x); "
                      f"busy quiet {q[2]}, loaded {loaded[2]}", flush=True)
    for model, values in quiet.items():
        mid = statistics.median(values)
        print(f"{model}: quiet evaluation img/s {' / '.join(f'{v:.1f}' for v in values)}: max/min "
              f"{max(values) / min(values):.2f}, +-{max(abs(v - mid) for v in values) / mid:.0%} of the median")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
