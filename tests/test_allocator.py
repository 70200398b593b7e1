"""keep_freed_memory: on Linux/glibc it sets malloc once for the process; the environment can say no."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

_PROBE = "from cnnlab.allocator import keep_freed_memory as k; print(k(), k())"


def _run(**env: str) -> str:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    return subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_kept_on_linux_unless_the_environment_chose() -> None:
    assert _run() == "True True"  # in effect, and a second call leaves it so
    assert _run(CNNLAB_MALLOC="system") == "False False"
    assert _run(MALLOC_ARENA_MAX="2") == "False False"  # the user's own malloc settings win
    assert _run(GLIBC_TUNABLES="glibc.malloc.trim_threshold=0") == "False False"
    assert _run(GLIBC_TUNABLES="glibc.rtld.nns=2") == "True True"  # tunables of something else


_HEAP = """
import ctypes
from cnnlab.allocator import glibc_defaults, keep_freed_memory

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


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_a_freed_block_stays_in_the_heap_except_under_glibc_defaults() -> None:
    """What the setting does: 200 MB freed stay in the heap for reuse; inside glibc_defaults() (the probe's
    L-BFGS, whose large arrays would double its peak memory there) they go back to the system."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k not in ("CNNLAB_MALLOC", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", _HEAP], env=base, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True True", out.stdout + out.stderr
