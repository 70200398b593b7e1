"""keep_freed_memory: on Linux/glibc it sets malloc once for the process; the environment can say no."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

_LIBC, _VERSION = platform.libc_ver()
_GLIBC_2_33 = sys.platform.startswith("linux") and _LIBC == "glibc" and tuple(map(int, _VERSION.split(".")[:2])) >= (2, 33)
_PROBE = "from cnnlab.runtime.allocator import keep_freed_memory as k; print(k(), k())"


def _run(**env: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    return subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
def test_freed_memory_is_kept_on_linux_unless_the_environment_chose() -> None:
    assert _run() == "True True"  # in effect, and a second call leaves it so
    assert _run(CNNLAB_MALLOC="system") == "False False"
    assert _run(MALLOC_ARENA_MAX="2") == "False False"  # the user's own malloc settings win
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "False False"
    assert _run(GLIBC_TUNABLES="glibc.rtld.nns=2") == "True True"  # tunables of something else


_OWNERS = """
import importlib, io, sys
from unittest import mock
from cnnlab.runtime import allocator
which = sys.argv[1]
if which == "bench-worker":
    from cnnlab.bench import worker
    sys.stdin = io.StringIO("")  # a standby worker that is never given a model
    worker.main(["--standby"])
elif which.startswith("bench-command"):
    from typer.testing import CliRunner
    import cnnlab.cli.bench as command
    from cnnlab.cli import app
    args = ["bench", sys.argv[2], "--models", "efficientnet_lite0", "-o", sys.argv[3]]
    with mock.patch.object(command, "run_bench"):  # the job itself is not what this is about
        result = CliRunner().invoke(app, args + (["--in-process"] if which.endswith("in-process") else []))
    assert result.exit_code == 0, result.output
elif which == "library":
    import cnnlab
    cnnlab.predict  # the library's entry points, imported and not called: the caller's process is left alone
else:
    importlib.import_module(which)  # importing a command's module changes nothing
print(allocator._done is True)
"""


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
@pytest.mark.parametrize(("owner", "kept"), [
    ("bench-worker", True), ("bench-command-in-process", True), ("bench-command", False), ("library", False),
    ("cnnlab.cli", False), ("cnnlab.cli.serve", False), ("cnnlab.cli.predict", False)])
def test_processes_that_run_models_for_bench_keep_freed_memory_and_nothing_else_changes(
        owner: str, kept: bool, tmp_path: Path) -> None:
    """bench's model processes keep freed memory; importing the command line (serve, predict...) or the library
    leaves malloc alone (serve's long-lived processes never trim the heap)."""
    from tests.helpers.images import make_image

    make_image(tmp_path / "data" / "a" / "1.jpg")
    argv = [sys.executable, "-c", _OWNERS, owner, str(tmp_path / "data"), str(tmp_path / "out")]
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run(argv, env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == str(kept)
    if kept:
        opted_out = subprocess.run(argv, env={**base, "CNNLAB_MALLOC": "system"}, capture_output=True, text=True,
                                   check=True)
        assert opted_out.stdout.strip().splitlines()[-1] == "False"


_HEAP = """
import ctypes
from cnnlab.runtime.allocator import glibc_defaults, keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = MallInfo2

def freed_mib_kept_in_heap():
    block = libc.malloc(200 << 20)
    ctypes.memset(block, 1, 200 << 20)
    libc.free(block)
    return libc.mallinfo2().fordblks >> 20

keep_freed_memory()
kept = freed_mib_kept_in_heap()
with glibc_defaults():
    given_back = freed_mib_kept_in_heap()
print(kept >= 200, given_back < 50)
"""


_GIVE_BACK = _HEAP.replace("with glibc_defaults():\n    given_back = freed_mib_kept_in_heap()", """
from cnnlab.runtime.allocator import give_back_free_memory
block = libc.malloc(200 << 20)
ctypes.memset(block, 1, 200 << 20)
libc.free(block)
give_back_free_memory()
given_back = libc.mallinfo2().fordblks >> 20""")


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
def test_free_memory_kept_for_reuse_goes_back_when_asked() -> None:
    """bench gives back what its batch-size trials freed before it measures the chosen batch's memory."""
    assert "give_back_free_memory()" in _GIVE_BACK
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _GIVE_BACK], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True", out.stdout + out.stderr


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
def test_a_freed_block_stays_in_the_heap_except_under_glibc_defaults() -> None:
    """What the setting does: 200 MB freed stay in the heap for reuse; inside glibc_defaults() (the probe's
    L-BFGS, whose large arrays would double its peak memory there) they go back to the system."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _HEAP], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True", out.stdout + out.stderr


#: What the heap scripts share: libc's malloc and free, and the resident memory in MiB.
_MALLOC = """
import ctypes
from cnnlab.runtime import allocator

libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
"""

_FRAGMENT = _MALLOC + """
import sys

def fragment(trim):
    # "batches" whose large block comes from the top because the freed pieces of earlier batches are in
    # use, each leaving a small block above its large one: the heap grows by 24 MiB a batch
    start, peak, holes, pinned = rss_mib(), 0, 0, []
    for _ in range(40):
        fillers = [libc.malloc(24 << 20) for _ in range(holes)]
        block = libc.malloc(24 << 20)
        ctypes.memset(block, 1, 24 << 20)
        pinned.append(libc.malloc(4096))
        for b in fillers + [block]:
            libc.free(b)
        holes += 1
        if trim:
            allocator.return_free_pages()
        peak = max(peak, rss_mib() - start)
    return peak, pinned

allocator.keep_freed_memory()
trim = sys.argv[1] == "trim"
first, pinned = fragment(trim)
fragmenting = allocator.trims
for _ in range(40):  # the same block again and again: the heap does not grow
    block = libc.malloc(40 << 20)
    ctypes.memset(block, 1, 40 << 20)
    libc.free(block)
    if trim:
        allocator.return_free_pages()
steady = allocator.trims - fragmenting
for b in pinned:
    libc.free(b)
with allocator.glibc_defaults():  # the heap shrinks (as after the probe's L-BFGS)
    libc.free(libc.malloc(1 << 20))
if trim:
    allocator.return_free_pages()
second, _ = fragment(trim)
print(first, fragmenting, steady, second)
"""


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
def test_a_fragmenting_heap_gives_its_free_pages_back_and_a_steady_one_is_left_alone() -> None:
    """Large blocks freed between small ones that stay, while the earlier pieces are in use: the heap grows
    by 24 MiB a "batch", to 960 MiB free in pieces. Kept, they stay resident; return_free_pages, called per
    batch, gives them back every GROWTH_BYTES of growth, never trims a heap that reuses its blocks, and
    measures growth from the smaller heap after the heap shrank."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}

    def run(mode: str) -> list[int]:
        out = subprocess.run([sys.executable, "-c", _FRAGMENT, mode], env=base, capture_output=True, text=True,
                             check=True)
        return [int(v) for v in out.stdout.split()]

    kept_mib, _, _, kept_again_mib = run("keep")
    trimmed_mib, fragmenting_trims, steady_trims, trimmed_again_mib = run("trim")
    assert kept_mib > 900 and kept_again_mib > 900  # 40 x 24 MiB, all resident
    assert trimmed_mib < 400 and trimmed_again_mib < 400  # at most GROWTH_BYTES (256 MiB) of growth, plus a block
    assert fragmenting_trims >= 3
    assert steady_trims == 0


@pytest.mark.slow
def test_every_batch_of_a_training_run_asks_whether_to_give_pages_back(tmp_path: Path) -> None:
    """The probe's forward passes, the training steps and the validation passes each call
    return_free_pages once per batch (whether or not freed memory is kept in this process)."""
    from cnnlab.runtime import allocator
    from cnnlab.train import TrainConfig, fine_tune
    from tests.helpers.images import make_colours
    from tests.helpers.runs import FAST

    data = make_colours(tmp_path / "colours")
    before = allocator.checks
    result = fine_tune(TrainConfig(data=str(data), out=str(tmp_path / "run"),
                                   **{**FAST, "epochs": 1, "freeze_epochs": 0, "ema": False}))
    batch = FAST["batch_size"]
    assert isinstance(batch, int)
    probe, steps, val = -(-result.n_train // batch), result.n_train // batch, -(-result.n_val // batch)
    assert [r.phase for r in result.history] == ["probe", "full"]
    assert allocator.checks - before >= probe + steps + 2 * val


_TOP = _MALLOC + """

allocator.keep_freed_memory()
allocator.return_free_pages()  # the mark
inside = libc.malloc(300 << 20)  # freed below a block that stays: a free piece inside the heap
ctypes.memset(inside, 1, 300 << 20)
pin = libc.malloc(8 << 20)  # larger than any free piece of the young heap: taken from above the block
libc.free(inside)
top = libc.malloc(320 << 20)  # larger than the piece; freed at the top of the heap: merged into the top, kept for the next batch
ctypes.memset(top, 1, 320 << 20)
libc.free(top)
before = rss_mib()
trimmed = allocator.return_free_pages()
print(trimmed, before - rss_mib())
"""


@pytest.mark.skipif(not _GLIBC_2_33, reason="glibc 2.33+ (mallopt, mallinfo2)")
def test_a_trim_gives_back_the_free_pieces_inside_the_heap_and_keeps_its_top() -> None:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _TOP], env=base, capture_output=True, text=True, check=True)
    trimmed, released_mib = out.stdout.split()
    assert trimmed == "True"
    assert 250 < int(released_mib) < 400  # the 300 MiB piece, not the 320 MiB at the top as well
