"""The yardstick of every speed figure: the machine's measured matrix-multiply peak, and a training run's model FLOP/s
as a fraction of it (MFU).

The peak is what torch's own GEMM reaches here, at each precision, with the threads training uses: a square GEMM
and two token-shaped ones (a batch of tokens through a base-size encoder's attention projection and its
feed-forward layer), the best of a few repeats. The work of a training step is counted from the model's shapes and
the real tokens of its batch (padding excluded: padded tokens are waste, not work), forward and backward (3x the
forward's multiplies); embeddings, norms and activations are not counted, as is usual for MFU.
"""

from __future__ import annotations

import time
from functools import cache

import torch

# GEMM shapes (m, k, n) timed for the peak: square, and tokens x hidden -> 3x hidden / hidden -> ffn at base size.
SHAPES = ((2048, 2048, 2048), (4096, 768, 2304), (4096, 768, 3072))
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense tensor-core peak of a GPU by its name, TFLOP/s per precision (the vendor's datasheet, without sparsity).
DATASHEET_TFLOPS = {"H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
                    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
                    "A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5}}


@cache
def gemm_peak(precision: str, device: str = "cpu", repeats: int = 3) -> float:
    """The best FLOP/s of torch's matrix multiply at ``precision`` on ``device`` over ``SHAPES`` (once per
    process and precision: the same figure is every configuration's yardstick)."""
    dtype, best = DTYPES[precision], 0.0
    for m, k, n in SHAPES:
        a = torch.randn(m, k, device=device).to(dtype)
        b = torch.randn(k, n, device=device).to(dtype)
        torch.mm(a, b)  # kernels chosen, pages touched
        for _ in range(repeats):
            _sync(device)
            began = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * m * k * n / (time.perf_counter() - began))
    return best


def datasheet_peak(precision: str, device: str = "cpu") -> float | None:
    """The GPU's dense datasheet peak (FLOP/s) at ``precision``, where its name is known; None on a CPU."""
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((table[precision] * 1e12 for key, table in DATASHEET_TFLOPS.items() if key in name), None)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_shape(config) -> tuple[int, int, int]:
    """(layers, hidden size, feed-forward size) of a Hugging Face encoder config (BERT, MPNet, RoBERTa, DeBERTa)."""
    return config.num_hidden_layers, config.hidden_size, config.intermediate_size


def train_flops(config, lengths) -> float:
    """Model FLOPs of one training step (forward and backward) over sequences of the given real token counts.

    Per layer and token: the four attention projections (4 d^2 multiply-adds) and the feed-forward pair (2 d f);
    per layer and sequence of s tokens: the attention scores and their weighted sum (2 s^2 d). A multiply-add is 2
    FLOPs; the backward pass costs twice the forward.
    """
    layers, d, f = encoder_shape(config)
    tokens = sum(int(s) for s in lengths)
    squares = sum(int(s) ** 2 for s in lengths)
    forward = 2 * layers * (tokens * (4 * d * d + 2 * d * f) + 2 * squares * d)
    return 3.0 * forward


def real_lengths(attention_mask: torch.Tensor) -> list[int]:
    """Each row's real tokens in a padded batch."""
    return attention_mask.sum(dim=1).tolist()


def padding_share(batches) -> float:
    """Of all the token positions in ``batches`` (each with an ``attention_mask``), the share that is padding."""
    real = total = 0
    for batch in batches:
        mask = batch["attention_mask"]
        real, total = real + int(mask.sum()), total + mask.numel()
    return 1 - real / max(total, 1)


def describe_peaks(precisions, device: str = "cpu") -> str:
    """One line: the measured GEMM peak at each precision (and the datasheet's, on a known GPU)."""
    parts = []
    for precision in precisions:
        sheet = datasheet_peak(precision, device)
        parts.append(f"{precision} {gemm_peak(precision, device) / 1e12:.2f} TFLOP/s"
                     + (f" (datasheet {sheet / 1e12:.0f})" if sheet else ""))
    return f"measured GEMM peak ({torch.get_num_threads()} threads, best of {len(SHAPES)} shapes): " + ", ".join(parts)
