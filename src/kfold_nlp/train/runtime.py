"""Kept for old imports: the names ``train/runtime.py`` had before it was split by noun (``hardware``, ``precision``,
``threads``, ``memory``, ``device``, ``seeds``); new code imports those modules.

Setting a name here (a test's ``monkeypatch.setattr(runtime, "cpu_has_native_bf16", ...)``) sets it in the module
that defines it too, where its callers look it up.
"""

from __future__ import annotations

import os  # noqa: F401  (tests patch ``runtime.os``)
import sys
import types

from . import device, hardware, memory, precision, seeds, threads
from .device import make_accelerator
from .hardware import (
    cpu_capability,
    cpu_has_native_bf16,
    cpu_model,
    cuda_has_bf16,
    header,
    record,
    usable_cores,
)
from .memory import keep_freed_memory, memory_mb, release_freed_memory, reset_peak_memory
from .precision import PRECISIONS, is_emulated, native_precisions, resolve_precision
from .seeds import stream_seed
from .threads import THREADS_ENV, set_threads, split_cores, threads_for_this_process

__all__ = ["PRECISIONS", "THREADS_ENV", "cpu_capability", "cpu_has_native_bf16", "cpu_model", "cuda_has_bf16",
           "header", "is_emulated", "keep_freed_memory", "make_accelerator", "memory_mb", "native_precisions",
           "record", "release_freed_memory", "reset_peak_memory", "resolve_precision", "set_threads", "split_cores",
           "stream_seed", "threads_for_this_process", "usable_cores"]
_HOMES = (device, hardware, memory, precision, seeds, threads)


class _Forwarding(types.ModuleType):
    def __setattr__(self, name, value):
        if name in __all__:
            for home in _HOMES:
                if getattr(home, name, None) is getattr(self, name):
                    setattr(home, name, value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Forwarding
