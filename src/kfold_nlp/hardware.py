"""The machine a run is on: what ``trainer.precision=auto`` becomes, the threads a process may use, and the hardware
record written beside every speed figure (``metrics.json``, W&B, ``make bench``, ``make race``).

A speed figure means nothing without its machine: the same bf16 step is fast where the CPU has native bf16
(AVX-512-BF16, AMX) and several times slower than fp32 where PyTorch has to emulate it (AVX2 alone), so the
precision is chosen from the hardware rather than assumed.
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch

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
