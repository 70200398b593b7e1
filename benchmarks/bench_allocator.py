"""What :func:`cnnlab.runtime.allocator.keep_freed_memory` (used by ``train``) changes: CPU speed of efficientnet_lite0's
forward pass (the probe's features, evaluation) and of training steps, with glibc's default ``malloc`` settings
and with freed memory kept for reuse, each in a fresh process.

Usage::

    .venv/bin/python benchmarks/bench_allocator.py [--images 480] [--steps 20] [--repeats 2]

Prints images/s, system (kernel) CPU seconds, minor page faults and peak RSS (the process, and its largest
DataLoader worker) of each setting, the median over ``--repeats`` runs taken in alternating order, and the
ratio of the two. The images are generated (256 px noise JPEGs); the model has its real ImageNet weights.
On a shared machine rerun it: the kernel time and page faults are the steady figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
from cnnlab.runtime.allocator import keep_freed_memory
from cnnlab.runtime.inference import run_inference
from cnnlab.options import RuntimeOptions
from cnnlab.runtime.loader import load_model

kept = keep_freed_memory()
paths, steps = sorted(Path(sys.argv[1]).glob("*.jpg")), int(sys.argv[2])
model = load_model("efficientnet_lite0", RuntimeOptions(device="cpu", channels_last=False, fold_bn=False))  # trained below
out = {"kept": kept}
for bs in (8, 32):
    start = time.perf_counter()
    n = sum(len(b.indices) for b in run_inference(model, paths, batch_size=bs, workers=2, features=True))
    out[f"forward_bs{bs}_ips"] = n / (time.perf_counter() - start)
net = model.module.train()
opt = torch.optim.SGD(net.parameters(), lr=1e-4)
x, y = torch.randn(16, 3, 176, 176), torch.randint(0, 1000, (16,))
start = time.perf_counter()
for _ in range(steps):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    opt.step()
out["train_bs16_176px_steps_per_s"] = steps / (time.perf_counter() - start)
usage = resource.getrusage(resource.RUSAGE_SELF)
children = resource.getrusage(resource.RUSAGE_CHILDREN)
out.update(sys_s=usage.ru_stime + children.ru_stime, minor_faults=usage.ru_minflt + children.ru_minflt,
           peak_rss_mib=usage.ru_maxrss / 1024, worker_peak_rss_mib=children.ru_maxrss / 1024)
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=480)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    import statistics

    import numpy as np
    from PIL import Image

    runs: dict[str, list[dict[str, float]]] = {"glibc defaults": [], "freed memory kept": []}
    settings = {"glibc defaults": {"CNNLAB_MALLOC": "system"}, "freed memory kept": {}}
    with tempfile.TemporaryDirectory(prefix="cnnlab-bench-alloc-") as tmp:
        rng = np.random.default_rng(0)
        for i in range(args.images):
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(Path(tmp) / f"{i:05d}.jpg")
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
        for rep in range(args.repeats):
            for name in list(settings)[:: 1 if rep % 2 == 0 else -1]:  # alternating order
                proc = subprocess.run([sys.executable, "-c", _CHILD, tmp, str(args.steps)],
                                      env={**base, **settings[name]}, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    keys = ["forward_bs8_ips", "forward_bs32_ips", "train_bs16_176px_steps_per_s", "sys_s", "minor_faults",
            "peak_rss_mib", "worker_peak_rss_mib"]
    rows = {name: {k: statistics.median(r[k] for r in rs) for k in keys} | {"kept": rs[0]["kept"]}
            for name, rs in runs.items()}
    print(f"efficientnet_lite0 (real weights), {args.images} generated images, {args.steps} training steps, "
          f"{os.cpu_count()} CPUs, median of {args.repeats} runs each")
    print("setting | " + " | ".join(keys))
    for name, row in rows.items():
        print(f"{name} (in effect: {row['kept']}) | " + " | ".join(f"{row[k]:,.2f}" for k in keys))
    ref, new = rows["glibc defaults"], rows["freed memory kept"]
    print("ratio kept/defaults | " + " | ".join(f"{new[k] / ref[k]:.2f}" if ref[k] else "-" for k in keys))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
