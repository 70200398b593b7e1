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
