"""The process's memory: its resident size and per-fold peak, and the C library's allocator knobs (keep freed
memory in the process while training, hand it back between folds)."""

from __future__ import annotations

import os
from pathlib import Path


def reset_peak_memory() -> None:
    """Start a new resident-memory high-water mark (Linux ``VmHWM``), so that each fold reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_mb() -> dict:
    """This process's resident memory now and its peak since ``reset_peak_memory`` (MiB): a fold that leaks makes
    the next one's grow.

    The peak is read from Linux's ``/proc/self/status`` (``VmHWM``): psutil has no high-water mark, let alone a
    resettable one. Elsewhere it is the peak since the process started.
    """
    import resource
    import sys

    import psutil

    now = psutil.Process().memory_info().rss / 2**20  # before the peak, which then holds it
    try:
        status = Path("/proc/self/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def _glibc():
    """The C library through ctypes when it is glibc (its malloc knobs are glibc's own), else None."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "gnu_get_libc_version") else None  # glibc only


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory in the process instead of handing it back to the kernel; True if it did.

    By default glibc serves each allocation above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and
    unmaps it on free, and trims the heap's top: every CPU training step then faults in and zeroes fresh pages.
    Serving everything from the heap and never trimming it keeps those pages: faster steps for a higher fold peak
    (docs/performance.md).
    Process-wide and idempotent; a no-op where the C library is not glibc, or with
    ``KFOLD_NLP_KEEP_FREED_MEMORY=0`` in the environment (memory-tight machines).
    """
    import ctypes

    libc = _glibc()
    if libc is None or os.environ.get("KFOLD_NLP_KEEP_FREED_MEMORY", "1") == "0":
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # <malloc.h>
    return bool(libc.mallopt(m_mmap_max, 0) and libc.mallopt(m_trim_threshold, ctypes.c_int(2**31 - 1)))


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the kernel (between folds): with ``keep_freed_memory`` nothing else
    does, and one fold's chunks, freed but fragmented, would otherwise add to the next fold's resident peak."""
    import gc

    gc.collect()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
