"""What ``trainer.precision`` becomes on this machine: ``auto`` chosen from the hardware rather than assumed, and
which precisions run natively (an explicit bf16 on a CPU without native bf16 is emulated, several times slower)."""

from __future__ import annotations

import torch

from . import hardware

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # trainer.precision: the one list of choices


def resolve_precision(requested: str) -> tuple[str, str | None]:
    """``(precision, note)``: what ``requested`` becomes on this machine, and a line to show (why ``auto`` chose
    what it chose, or a warning that an explicit bf16 will be emulated); ``note`` is None when there is nothing to
    say. fp16 without CUDA is left to the schema, which refuses it."""
    cuda = torch.cuda.is_available()
    if requested == "auto":
        if cuda:
            if hardware.cuda_has_bf16():
                return "bf16", f"precision auto -> bf16: {torch.cuda.get_device_name(0)} supports bf16"
            return "fp16", f"precision auto -> fp16: {torch.cuda.get_device_name(0)} has no bf16"
        if hardware.cpu_has_native_bf16():
            why = hardware.cpu_bf16_unit() or hardware.cpu_capability()  # AMX, AVX512-BF16; else torch's name
            return "bf16", f"precision auto -> bf16: this CPU has native bf16 ({why})"
        return "fp32", f"precision auto -> fp32: this CPU has no native bf16 ({hardware.cpu_capability()})"
    if requested == "bf16" and not cuda and not hardware.cpu_has_native_bf16():
        return "bf16", (f"warning: trainer.precision=bf16 on a CPU without native bf16 ({hardware.cpu_capability()}): "
                        f"it is emulated, measured 5-10x slower than fp32 (docs/results.md); use "
                        f"trainer.precision=auto")
    return requested, None


def native_precisions() -> list[str]:
    """The precisions this machine runs natively, fp32 first: what a benchmark should time by default."""
    if torch.cuda.is_available():
        return ["fp32", "bf16" if hardware.cuda_has_bf16() else "fp16"]
    return ["fp32", "bf16"] if hardware.cpu_has_native_bf16() else ["fp32"]


def is_emulated(precision: str, device: str = "cpu") -> bool:
    return precision == "bf16" and device == "cpu" and not hardware.cpu_has_native_bf16()
