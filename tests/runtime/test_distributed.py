"""Process groups through torchrun (gloo on CPU): exact sharding, gathering on rank 0, the --nproc command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.errors import UsageError
from cnnlab.runtime.distributed import DistContext, from_environment, shard, torchrun_command, without_option


@pytest.mark.parametrize("count", [0, 1, 5, 7, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_item_exactly_once(count: int, world: int) -> None:
    blocks = [shard(count, DistContext(rank, world, rank)) for rank in range(world)]
    items = [i for block in blocks for i in block]
    assert items == list(range(count))
    sizes = [len(block) for block in blocks]
    assert max(sizes) - min(sizes) <= 1
    assert shard(count, None) == range(count)


def test_environment_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert from_environment() is None
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_environment() == DistContext(1, 2, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(UsageError, match="outside WORLD_SIZE"):
        from_environment()
    args = ["bench", "data", "--nproc", "2", "-q", "--nproc=3"]
    assert without_option(args, "--nproc") == ["bench", "data", "-q"]
    assert torchrun_command(2, ["bench", "data"])[-5:] == ["--nproc-per-node=2", "-m", "cnnlab", "bench", "data"]


_SCRIPT = """
import json, sys
from cnnlab.runtime.distributed import (barrier, broadcast_from_main, destroy_process_group, from_environment,
                                gather_to_main, init_process_group, shard)
ctx = from_environment()
init_process_group(ctx)
items = broadcast_from_main(list(range(11)) if ctx.is_main else None, ctx)
mine = [items[i] * 10 for i in shard(len(items), ctx)]
gathered = gather_to_main({"rank": ctx.rank, "values": mine}, ctx)
barrier(ctx)
if ctx.is_main:
    json.dump(gathered, open(sys.argv[1], "w"))
import os, torchvision  # as a command does, after the group exists
destroy_process_group()
if os.path.isdir("/proc/self/task"):  # the threads left: the group's own must be gone
    names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
    json.dump(names, open(f"{sys.argv[1]}.threads{ctx.rank}", "w"))
"""


def test_two_processes_with_gloo_gather_every_item_once(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(_SCRIPT, encoding="utf-8")
    out = tmp_path / "gathered.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    gathered = json.loads(out.read_text(encoding="utf-8"))
    assert [g["rank"] for g in gathered] == [0, 1]
    assert [v for g in gathered for v in g["values"]] == [i * 10 for i in range(11)]
    if sys.platform == "linux":  # torch._dynamo imported after the group kept it alive with its gloo threads, one of
        for rank in (0, 1):  # which could abort the process at exit (SIGABRT)
            threads = json.loads(Path(f"{out}.threads{rank}").read_text(encoding="utf-8"))
            assert not [t for t in threads if "gloo" in t], threads
