"""The machine a run is on: what ``trainer.precision=auto`` becomes, the threads a process may use, the accelerator,
the C library's memory knobs and the per-fold memory peak, and the hardware record written beside every speed figure
(``metrics.json``, W&B, ``make bench``, ``make race``).

A speed figure means nothing without its machine: the same bf16 step is fast where the CPU has native bf16
(AVX-512-BF16, AMX) and several times slower than fp32 where PyTorch has to emulate it (AVX2 alone), so the
precision is chosen from the hardware rather than assumed.
"""

from __future__ import annotations

import os
import platform
import warnings
from functools import lru_cache
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs


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


PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # trainer.precision: the one list of choices


THREADS_ENV = "KFOLD_NLP_THREADS"  # set by a parallel launcher for its fold jobs: their share of the cores


def cpu_capability() -> str:
    """PyTorch's name for the widest vector unit it uses here (``AVX2``, ``AVX512``, ``DEFAULT`` ...)."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_has_native_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX-512-BF16 or AMX); elsewhere bf16 is emulated, and slow."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(requested: str) -> tuple[str, str | None]:
    """``(precision, note)``: what ``requested`` becomes on this machine, and a line to show (why ``auto`` chose
    what it chose, or a warning that an explicit bf16 will be emulated); ``note`` is None when there is nothing to
    say. fp16 without CUDA is left to the schema, which refuses it."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            if cuda_has_bf16():
                return "bf16", f"precision auto -> bf16: {torch.cuda.get_device_name(0)} supports bf16"
            return "fp16", f"precision auto -> fp16: {torch.cuda.get_device_name(0)} has no bf16"
        if cpu_has_native_bf16():
            return "bf16", f"precision auto -> bf16: this CPU has native bf16 ({cpu_capability()})"
        return "fp32", f"precision auto -> fp32: this CPU has no native bf16 ({cpu_capability()})"
    if requested == "bf16" and not cuda and not cpu_has_native_bf16():
        return "bf16", (f"warning: trainer.precision=bf16 on a CPU without native bf16 ({cpu_capability()}): it is "
                        f"emulated, measured 5-10x slower than fp32 (docs/results.md); use "
                        f"trainer.precision=auto")
    return requested, None


def native_precisions() -> list[str]:
    """The precisions this machine runs natively, fp32 first: what a benchmark should time by default."""
    if torch.cuda.is_available():
        return ["fp32", "bf16" if cuda_has_bf16() else "fp16"]
    return ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]


def is_emulated(precision: str, device: str = "cpu") -> bool:
    return precision == "bf16" and device == "cpu" and not cpu_has_native_bf16()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_for_this_process() -> int:
    """Intra-op threads: the launcher's share when it set one (parallel fold jobs split the cores), else
    ``OMP_NUM_THREADS`` when set, else every usable core. More threads than cores oversubscribes the OpenMP pools
    and slows every process on the machine."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):  # ours, then the user's (or joblib's workers': cores / n_jobs)
        share = os.environ.get(name, "")
        if share.isdigit() and int(share) > 0:
            return min(int(share), usable_cores())
    return usable_cores()


def set_threads() -> int:
    """Apply ``threads_for_this_process`` to torch (on CPU; a GPU run only feeds the device) and return it."""
    n = threads_for_this_process()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def split_cores(jobs: int) -> int:
    """Threads for each of ``jobs`` processes running side by side on this process's cores (at least 1)."""
    return max(1, usable_cores() // max(1, jobs))


@lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record(precision: str | None = None) -> dict:
    """What every speed figure is tied to: CPU, its vector unit and bf16, cores and threads, GPUs, versions."""
    import accelerate
    import transformers

    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() \
        else []
    out = {
        "cpu": cpu_model(),
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "cores_usable": usable_cores(),
        "cores_host": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": gpus[0] if gpus else None,
        "gpu_count": len(gpus),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }
    if precision is not None:
        out["precision"] = precision
    return out


def header(rec: dict) -> str:
    """The one-line hardware header of a benchmark's output."""
    gpu = f"{rec['gpu_count']}x {rec['gpu']}" if rec["gpu_count"] else "no GPU"
    bf16 = "native bf16" if rec["cpu_native_bf16"] else "no native bf16"
    return (f"hardware: {rec['cpu']} ({rec['cpu_capability']}, {bf16}), {rec['cores_usable']} usable cores of "
            f"{rec['cores_host']}, {rec['threads']} threads, {gpu} | torch {rec['torch']}, transformers "
            f"{rec['transformers']}")


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
    unmaps it on free, and trims the heap's top: every CPU training step then faults in and zeroes about half a
    million fresh pages (MiniLM, batch 16, length 256, attention dropout). Serving everything from the heap and
    never trimming it keeps those pages: bf16 steps measured 1.26x faster, for a fold peak about 15% higher
    (README, "Performance"). Process-wide and idempotent; a no-op where the C library is not glibc, or with
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


warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


def make_accelerator(trainer_cfg) -> Accelerator:
    """CUDA when present, CPU otherwise (``cpu=True`` also makes torchrun on CPU really distributed); on CPU as many
    intra-op threads as this process has cores (``runtime.set_threads``).

    Gradient accumulation is ``optimizer_step``'s, not accelerate's: ``accumulate`` divides every micro-batch by k,
    which is wrong for a shorter last group of an epoch.
    """
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[resolve_precision(trainer_cfg.precision)[0]]
    if precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    if not torch.cuda.is_available():
        keep_freed_memory()
        set_threads()
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=precision,
        step_scheduler_with_optimizer=False,
        # Buffers are the same on every rank (Mixout's pretrained weights among them): never re-send them each step.
        # torch 2.13 calls the flag deprecated (its successor, forward_sync_buffers, is not an accelerate kwarg yet)
        # and warns once per fold under DDP: the behaviour is the one wanted, so the warning is not shown.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


def stream_seed(seed: int, fold: int, rank: int = 0, step: int = 0) -> int:
    """The one formula of every random stream a fold draws: fold ``fold``'s model and data order (``rank`` 0, step
    0: ``seed + fold``, so a single process reproduces a run whatever launched it), another DDP rank's dropout masks,
    and a rank's fresh stream when it resumes at ``step``."""
    return seed + fold + 7919 * rank + 104729 * step
