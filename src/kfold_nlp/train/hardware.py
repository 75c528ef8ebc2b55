"""What machine a run is on: its CPU, vector unit and native bf16, the cores this process may use, its GPUs, and the
record written beside every speed figure (``metrics.json``, W&B, ``make bench``, ``make race``).

A speed figure means nothing without its machine: the same bf16 step is fast where the CPU has native bf16
(AVX-512-BF16, AMX) and several times slower than fp32 where PyTorch has to emulate it (AVX2 alone).
"""

from __future__ import annotations

import os
import platform
from functools import lru_cache

import torch


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


def cpu_bf16_unit() -> str | None:
    """What gives this CPU native bf16, by its feature flags: ``AMX`` (matrix tiles with bf16, Sapphire Rapids on),
    ``AVX512-BF16`` (bf16 dot products in the vector unit); None where neither flag is known (PyTorch's
    ``cpu_capability`` says ``AVX512`` for both)."""
    flags = cpu_flags()
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    return None


def cuda_has_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or ``taskset``'s share), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@lru_cache(maxsize=1)
def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (``/proc/cpuinfo``, Linux); empty elsewhere."""
    return frozenset((_cpuinfo("flags") or "").split())


def _cpuinfo(field: str) -> str | None:
    """The first CPU's ``field`` in ``/proc/cpuinfo``; None where there is no such file or field."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return None


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
        "cpu_bf16_unit": cpu_bf16_unit(),  # AMX, AVX512-BF16 or None
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
    unit = f" via {rec['cpu_bf16_unit']}" if rec.get("cpu_bf16_unit") else ""
    bf16 = f"native bf16{unit}" if rec["cpu_native_bf16"] else "no native bf16"
    return (f"hardware: {rec['cpu']} ({rec['cpu_capability']}, {bf16}), {rec['cores_usable']} usable cores of "
            f"{rec['cores_host']}, {rec['threads']} threads, {gpu} | torch {rec['torch']}, transformers "
            f"{rec['transformers']}")
