"""The accelerator a fold trains with: CUDA when present, else the CPU with this process's threads and glibc
keeping freed memory; its mixed precision from ``trainer.precision``."""

from __future__ import annotations

import warnings

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from . import memory, precision, threads

warnings.filterwarnings("ignore", message="`broadcast_buffers` is deprecated", category=FutureWarning)


def make_accelerator(trainer_cfg) -> Accelerator:
    """CUDA when present, CPU otherwise (``cpu=True`` also makes torchrun on CPU really distributed); on CPU as many
    intra-op threads as this process has cores (``threads.set_threads``).

    Gradient accumulation is ``optimizer_step``'s, not accelerate's: ``accumulate`` divides every micro-batch by k,
    which is wrong for a shorter last group of an epoch.
    """
    mixed = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision.resolve_precision(trainer_cfg.precision)[0]]
    if mixed == "fp16" and not torch.cuda.is_available():
        raise ValueError("trainer.precision=fp16 needs CUDA; use bf16 or fp32 on CPU")
    if not torch.cuda.is_available():
        memory.keep_freed_memory()
        threads.set_threads()
    return Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mixed,
        step_scheduler_with_optimizer=False,
        # Buffers are the same on every rank (Mixout's pretrained weights among them): never re-send them each step.
        # torch 2.13 calls the flag deprecated (its successor, forward_sync_buffers, is not an accelerate kwarg yet)
        # and warns once per fold under DDP: the behaviour is the one wanted, so the warning is not shown.
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )
