"""Running on several processes with PyTorch's own engine: ``torchrun`` launches, ``torch.distributed`` talks.

cnnlab never starts its own rendezvous: a command started by ``torchrun`` (or by
``--nproc N``, which re-launches the same command under ``torch.distributed.run``) finds the
variables torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ...), joins the
group (gloo on CPUs, NCCL on CUDA), and splits its work by rank:

* :func:`shard` gives each rank a contiguous block of the items, each item exactly once (no padding
  with repeats, unlike ``DistributedSampler``'s default), so evaluation counts are exact;
* :func:`gather_to_main` collects one picklable object per rank on rank 0, which alone writes files.

Where it is used: ``bench`` (:mod:`cnnlab.bench.ranks`: each rank's worker evaluates its shard,
rank 0 merges the rows) and ``train`` (:mod:`cnnlab.train.ddp`: DistributedDataParallel).
``predict``, ``review`` and the other commands run in one process.

Multi-node runs use torchrun's own options (``--nnodes``, ``--node-rank``, ``--rdzv-endpoint`` or
``--master-addr``/``--master-port``), documented in docs/commands/bench.md (several processes, GPUs and nodes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cnnlab.errors import UsageError

#: The variables torchrun sets for every process it starts.
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a ``torchrun`` launch."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that reports and writes files."""
        return self.rank == 0


def from_environment() -> DistContext | None:
    """The launch this process belongs to, or ``None`` when it was not started by ``torchrun``."""
    if not all(name in os.environ for name in TORCHRUN_VARIABLES):
        return None
    try:
        ctx = DistContext(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    except ValueError:
        raise UsageError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers (they are set by torchrun)") from None
    if not 0 <= ctx.rank < ctx.world_size:
        raise UsageError(f"RANK {ctx.rank} is outside WORLD_SIZE {ctx.world_size}")
    return ctx


def init_process_group(ctx: DistContext, device_type: str = "cpu") -> None:
    """Join the group torchrun set up: NCCL for CUDA, gloo otherwise (idempotent)."""
    import torch.distributed as dist

    if dist.is_initialized():
        return
    # torch._dynamo (imported by torchvision) takes references to the default group when it is first imported
    # after the group exists (measured on torch 2.14: the group's reference count 10 -> 20, and destroy_process_group
    # leaves 12 instead of 2), so destroy_process_group cannot free it: its gloo threads then
    # live on into interpreter shutdown, where one that drops the last reference to a tensor of a finished
    # collective aborts the process (SIGABRT, "terminate called without an active exception"). Imported first,
    # it takes none.
    import torch._dynamo

    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        import torch

        torch.cuda.set_device(ctx.local_rank)
    dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)


def destroy_process_group() -> None:
    """Leave the group (so the process exits cleanly)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def shard(count: int, ctx: DistContext | None) -> range:
    """This rank's contiguous block of ``range(count)``; the blocks of all ranks cover it exactly once.

    Block sizes differ by at most one item. Without a launch (``ctx`` is ``None``) it is everything.
    """
    if ctx is None or ctx.world_size == 1:
        return range(count)
    start = count * ctx.rank // ctx.world_size
    stop = count * (ctx.rank + 1) // ctx.world_size
    return range(start, stop)


def gather_to_main(obj: Any, ctx: DistContext | None) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (``None`` on the others). Without a launch: ``[obj]``."""
    if ctx is None or ctx.world_size == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def broadcast_from_main(obj: Any, ctx: DistContext | None) -> Any:
    """Rank 0's ``obj`` on every rank (what rank 0 decided, e.g. the data it scanned)."""
    if ctx is None or ctx.world_size == 1:
        return obj
    import torch.distributed as dist

    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext | None) -> None:
    """Wait until every rank arrives here."""
    if ctx is not None and ctx.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def torchrun_command(nproc: int, cnnlab_args: Sequence[str]) -> list[str]:
    """The command that runs ``cnnlab ARGS`` as ``nproc`` processes on this machine under torchrun
    (through :func:`launch`, which keeps the command's exit status)."""
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    return [sys.executable, "-m", "cnnlab.runtime.distributed", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "cnnlab", *cnnlab_args]


def without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``--name VALUE`` / ``--name=VALUE`` (to re-launch a command without ``--nproc``)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def relaunch(nproc: int, command: str) -> int:
    """Run this command line again as ``nproc`` processes under torchrun (without ``--nproc``); its exit status.

    The command line is this process's own (``sys.argv``), from the word ``command`` on.
    """
    import subprocess

    argv = sys.argv[1:]
    if command not in argv:
        raise UsageError(f"--nproc re-launches the `cnnlab {command}` command line; from Python, start it "
                         f"with torchrun --nproc-per-node {nproc} -m cnnlab {command} ...")
    args = without_option(argv[argv.index(command):], "--nproc")
    proc = subprocess.Popen(torchrun_command(nproc, args))
    try:
        return proc.wait()
    except KeyboardInterrupt:  # Ctrl-C reached the launcher and the ranks; a lone SIGINT is passed on
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.terminate()  # torchrun stops its ranks on SIGTERM (a SIGKILL would orphan them)
            proc.wait()
        raise


#: Seconds the launcher is given to stop its ranks after Ctrl-C before it is asked again with SIGTERM.
STOP_GRACE_S = 30.0


def exit_status(failures: dict[int, Any]) -> int:
    """The exit status of a launch whose processes failed (``failures``: global rank -> torchrun's
    ``ProcessFailure``): rank 0's own status when it failed by itself (it decides, e.g. 4 when a model
    failed), else that of the first process that failed (the others were stopped because of it);
    ``128 + N`` for a process killed by signal ``N``."""
    main = failures.get(0)
    if main is not None and main.exitcode > 0:
        return int(main.exitcode)
    first = min(failures.values(), key=lambda f: f.timestamp)
    code = int(first.exitcode)
    return code if code > 0 else 128 - code if code < 0 else 1


def launch(argv: Sequence[str]) -> int:
    """``torchrun ARGV`` in this process, quietly: each rank prints its own errors, so a failure is
    not followed by torchrun's traceback and summary; the exit status is the command's (see
    :func:`exit_status`), not torchrun's 1. ``python -m cnnlab.runtime.distributed ARGV`` runs it."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default, without its banner (ranks set threads)
    for name in list(logging.Logger.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        run(parse_args(list(argv)))
    except ChildFailedError as exc:
        code = exit_status(exc.failures)
        rank, first = exc.get_first_failure()
        if first.exitcode < 0 and first.signal_name() != "SIGTERM":
            print(f"cnnlab: rank {rank} was killed by {first.signal_name()}", file=sys.stderr)
        return code
    except SignalException as exc:  # Ctrl-C or a kill: torchrun has stopped the ranks
        return 128 + int(exc.sigval)
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(launch(sys.argv[1:]))
