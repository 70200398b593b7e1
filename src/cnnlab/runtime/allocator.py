"""The C allocator's settings for CPU runs of a network: ``train`` and ``bench``'s model processes.

glibc's ``malloc`` serves large blocks with ``mmap`` and gives them back to the system when they are
freed. A CPU forward pass frees and allocates activations of tens of megabytes at every layer, so each
batch touches every page of them afresh, and the kernel's page faults can cost more than the network
itself (``benchmarks/bench_allocator.py`` measures it).
:func:`keep_freed_memory` makes ``malloc`` take every block from its heap and keep up to 2 GiB of freed
memory there for the next batch, as PyTorch's performance guide does by preloading jemalloc or tcmalloc.

It is called by ``train`` (and ``fine_tune``), by each of ``bench``'s model processes (its rows of
efficientnet_lite0 and mobilenet_v3_large ran 1.2-1.3x faster end to end, resnet50 1.15x, on 96 JPEGs on 2 cores;
its memory figures then count the freed memory a batch reuses) and by ``bench --in-process``, which runs the models
in the command's own process. Other commands, ``predict`` (whose PyTorch path peaked 0.4-0.5 GB higher with it)
and library calls other than ``fine_tune`` leave malloc as it is.

It changes the whole process, once, on Linux with glibc only, and cannot be undone: freed memory stays
with the process (up to 2 GiB at the top of the main heap, and what other threads freed in their own
arenas) for whatever it does next. A library user who calls ``fine_tune`` inside a long-lived process
(a server, a notebook) and does not want that sets ``CNNLAB_MALLOC=system``. It does nothing when the
user has chosen glibc's malloc settings (a ``MALLOC_*`` variable, or ``glibc.malloc`` tunables in
``GLIBC_TUNABLES``).

With every block taken from the heap, the heap can fragment: a small block that outlives its batch (the
features or logits a caller keeps, a list that grew) lands between the batch's large blocks, and once
enough of them split the freed space into pieces smaller than the next batch's largest blocks, the heap
grows by about a batch at every batch (seen with many classes and the probe's forward passes; the
docs' internals page has the measurements). It depends on where blocks happen to fall, so the
loops call :func:`return_free_pages` once per batch: when the free memory inside the heap (below its
top) has grown by :data:`GROWTH_BYTES` past its mark, ``malloc_trim`` gives its pages back to the
system and keeps the top. The settings need glibc 2.33 or later (``mallinfo2``); on an older glibc
:func:`keep_freed_memory` leaves malloc as it is. DataLoader worker processes inherit the settings and
do not trim (they decode images).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator
from typing import Any

#: glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
#: glibc's own defaults for those two (malloc(3)), restored by :func:`glibc_defaults`.
_DEFAULT_TRIM_THRESHOLD = 128 * 1024
_DEFAULT_MMAP_MAX = 65536
#: Freed memory at the top of the heap kept for reuse before it goes back to the system.
KEPT_BYTES = 2**31 - 1
#: Growth of the free memory inside the heap past its mark that makes :func:`return_free_pages` give
#: its pages back.
GROWTH_BYTES = 256 * 2**20

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Serve large blocks from the heap and keep freed memory for reuse (see the module docstring).

    Returns whether the settings are in effect: False off Linux, on a glibc older than 2.33 (no
    ``mallinfo2``, which :func:`return_free_pages` needs to bound the heap), on other C libraries, or
    when the environment chose.
    """
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("CNNLAB_MALLOC") == "system":
        return False
    if any(name.startswith("MALLOC_") for name in os.environ) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        mallinfo2, malloc_trim = libc.mallinfo2, libc.malloc_trim
    except (OSError, AttributeError):  # musl and others (no mallopt), glibc before 2.33 (no mallinfo2)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    mallinfo2.restype = _MallInfo2
    malloc_trim.argtypes = [ctypes.c_size_t]
    malloc_trim.restype = ctypes.c_int
    global _mallopt, _libc
    _mallopt, _libc = mallopt, libc
    _done = _set(0, KEPT_BYTES)
    return _done


_mallopt: Any = None
_libc: Any = None
#: The free memory inside the heap that :func:`return_free_pages` measures growth from.
_mark: int | None = None
#: How often :func:`return_free_pages` was called, and how often it trimmed the heap, in this process
#: (diagnostics).
checks = 0
trims = 0


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def free_inside_heap() -> int:
    """Free bytes inside the heaps, not counting the free memory at the top of the main heap (which
    :data:`KEPT_BYTES` bounds): ``mallinfo2().fordblks - keepcost``; 0 when :func:`keep_freed_memory` is
    not in effect."""
    if not _done:
        return 0
    info = _libc.mallinfo2()
    return int(info.fordblks - info.keepcost)


def return_free_pages() -> bool:
    """Once per batch of a long loop: when freed memory is kept (:func:`keep_freed_memory`) and the free
    memory inside the heap (:func:`free_inside_heap`) has grown by more than :data:`GROWTH_BYTES` past a
    mark, give its pages back to the system (``malloc_trim``, keeping the top of the heap); returns
    whether it did.

    Memory a batch frees at the top of the heap merges into the top, which is kept for the next batch
    and not counted, so a loop whose working set is larger than the one before mostly is not. What grows
    inside the heap is freed memory that later blocks did not fit into (fragmentation, module docstring;
    also the pieces of the probe's forward passes that training's blocks do not fit into, which
    ``benchmarks/bench_train.py`` counts). The mark is that
    amount at the first call, lowered whenever a call finds it smaller (the pieces were used or merged,
    a second run in the process) and set to it at each trim (the pieces stay free, without their pages).
    So growth counts from the lowest point since the last trim: a fragmenting heap is trimmed about once
    per :data:`GROWTH_BYTES` of growth, and a loop whose free memory inside the heap swung by more than
    that from batch to batch would be trimmed at every swing. The pages given back are faulted in again
    when the pieces are used. The cost of a call is a ``mallinfo2``, which walks the lists of free blocks:
    small beside a batch (``benchmarks/bench_allocator.py``).
    """
    global _mark, trims, checks
    checks += 1
    if not _done:
        return False
    free = free_inside_heap()
    if _mark is None or free <= _mark + GROWTH_BYTES:
        _mark = free if _mark is None else min(_mark, free)
        return False
    _libc.malloc_trim(KEPT_BYTES)
    _mark = free
    trims += 1
    return True


def give_back_free_memory() -> None:
    """Every free page back to the system now (``malloc_trim(0)``), when freed memory is kept: between phases
    whose memory must not count in the next one's (bench's batch-size trials, then the measured phases)."""
    global _mark
    if _done:
        _libc.malloc_trim(0)
        _mark = free_inside_heap()


def _set(mmap_max: int, trim_threshold: int) -> bool:
    return bool(_mallopt(_M_MMAP_MAX, mmap_max)) and bool(_mallopt(_M_TRIM_THRESHOLD, trim_threshold))


@contextlib.contextmanager
def glibc_defaults() -> Iterator[None]:
    """glibc's own settings inside the block, when :func:`keep_freed_memory` is in effect: for work that
    allocates and frees arrays of hundreds of megabytes of changing sizes (the probe's L-BFGS over
    20,000 x 1,000 logits), which the heap alone would hold at a much higher peak (measured at 1000 classes:
    docs/internals.md)."""
    if not _done:
        yield
        return
    _set(_DEFAULT_MMAP_MAX, _DEFAULT_TRIM_THRESHOLD)
    try:
        yield
    finally:
        _set(0, KEPT_BYTES)
