"""Start-up time of the command line: ``cnnlab --help`` and each ``COMMAND --help``, against references
measured in the same run (a bare Python, Python importing typer and rich, Python importing torch).

    python benchmarks/bench_cli.py [--repeats 7]

Goal (issue 8): ``cnnlab --help`` under 0.5 s on the 2-core reference machine. The CLI imports only
typer, rich and cnnlab's light modules (option vocabularies, config classes) until a command runs.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("python -c pass", [sys.executable, "-c", "pass"]),
    ("python -c 'import typer, rich'", [sys.executable, "-c", "import typer, rich.console"]),
    ("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
    ("cnnlab --help", [sys.executable, "-m", "cnnlab", "--help"]),
    ("cnnlab --version", [sys.executable, "-m", "cnnlab", "--version"]),
    ("cnnlab bench --help", [sys.executable, "-m", "cnnlab", "bench", "--help"]),
    ("cnnlab train --help", [sys.executable, "-m", "cnnlab", "train", "--help"]),
    ("cnnlab collect --help", [sys.executable, "-m", "cnnlab", "collect", "--help"]),
]


def wall(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results = {name: wall(cmd, args.repeats) for name, cmd in CASES}
    floor = results["python -c 'import typer, rich'"]
    torch_import = results["python -c 'import torch'"]
    print(f"median of {args.repeats} runs; ratios against Python importing typer and rich (the floor of a typer CLI)")
    for name, seconds in results.items():
        print(f"  {name:34} {seconds:6.3f} s   {seconds / floor:5.2f}x floor   {seconds / torch_import:5.2f}x 'import torch'")
    verdict = "meets" if results["cnnlab --help"] < 0.5 else "misses"
    print(f"cnnlab --help: {results['cnnlab --help']:.3f} s ({verdict} the 0.5 s goal)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
