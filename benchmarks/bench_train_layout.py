"""What training in the channels-last (NHWC) layout, as ``cnnlab train`` does on the CPU, changes: the time of
a training step (forward, backward, AdamW) of some registry models in PyTorch's default layout and in
channels-last, each in a fresh process with cnnlab's ``malloc`` setting (:mod:`cnnlab.runtime.allocator`), as ``train``
has it.

Usage::

    .venv/bin/python benchmarks/bench_train_layout.py [--models efficientnet_lite0,mobilenet_v3_large,resnet50]
        [--batch 16] [--size 224] [--steps 5] [--repeats 2]

Prints seconds per step of each layout (the median over ``--repeats`` runs, taken in alternating order) and the
ratio default / channels-last (above 1: channels-last is faster). The models have RANDOM weights (the speed of a
step does not depend on them) and train every layer on random images; ``train``'s own runs keep early layers
frozen and train on 0.8 of the evaluation size, so its gain end to end is smaller (docs/internals.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

_CHILD = r"""
import json, sys, time
import torch
from cnnlab.runtime.allocator import keep_freed_memory
from cnnlab.models.load import load_torch
from cnnlab.options import ModelSource, RuntimeOptions

keep_freed_memory()
name, channels_last, batch, size, steps = sys.argv[1], sys.argv[2] == "1", *map(int, sys.argv[3:6])
model = load_torch(ModelSource(name=name, policy="random"),  # trained: batch norms stay as they are
                   RuntimeOptions(device="cpu", channels_last=channels_last, fold_bn=False), progress=False)
net = model.module.train()
opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
x = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
y = torch.randint(0, 1000, (batch,))

def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()  # LoadedModel: normalises, lays out, runs
    opt.step()

step()  # the first step builds oneDNN's kernels for these shapes: untimed
start = time.perf_counter()
for _ in range(steps):
    step()
print(json.dumps({"seconds_per_step": (time.perf_counter() - start) / steps}))
"""


def one(name: str, channels_last: bool, args: argparse.Namespace) -> float:
    src = str(Path(__file__).resolve().parents[1] / "src")
    cmd = [sys.executable, "-c", _CHILD, name, "1" if channels_last else "0", str(args.batch), str(args.size),
           str(args.steps)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": src})
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: {proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds_per_step"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="efficientnet_lite0,mobilenet_v3_large,resnet50")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; RANDOM weights; batch {args.batch}, "
          f"{args.size} px, every layer training; median of {args.repeats} fresh processes per layout")
    print("model | default s/step | channels-last s/step | default / channels-last")
    for name in [m for m in args.models.split(",") if m]:
        times: dict[bool, list[float]] = {False: [], True: []}
        for r in range(args.repeats):
            for layout in ((False, True) if r % 2 == 0 else (True, False)):
                times[layout].append(one(name, layout, args))
        default, nhwc = statistics.median(times[False]), statistics.median(times[True])
        print(f"{name} | {default:.3f} | {nhwc:.3f} | {default / nhwc:.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
