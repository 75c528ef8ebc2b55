"""Cheaper dropout masks on CPU (``trainer.fast_dropout``): the same Bernoulli law, four masks per 64-bit draw.

On CPU, dropout is the largest cost of a training step after the matrix work: PyTorch draws each mask element
with its own Bernoulli sample, and attention dropout needs one element per score (``batch x heads x L x L`` in
every layer), which also keeps attention off the fused kernel. Here every mask element is one 16-bit lane of a
64-bit random word from torch's generator: an element is dropped when its lane falls in the lowest
``round(p * 65536)`` values, so the drop probability is ``p`` to within ``2**-17`` and the kept values are scaled
by the exact inverse of the keep probability (the expectation is unchanged). The draws come from torch's default
generator, so ``torch.manual_seed``, snapshots and resume govern them as they govern PyTorch's own dropout.

``apply`` converts a model in place: every plain ``nn.Dropout`` becomes a ``FastDropout`` (a subclass: whatever
walks dropout modules, ``set_dropout`` included, still finds it), and a backbone on transformers' ``sdpa``
attention switches to ``kfold_nlp_sdpa``, which is ``sdpa`` itself whenever there is no dropout (evaluation,
``p = 0``) or the tensors are not on the CPU, and otherwise attention written out with these masks. Nothing in a
state dict changes: fold models, snapshots and the bundle are as without it. GPUs draw masks inside their fused
kernels already, so there it changes nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION = "kfold_nlp_sdpa"
LANES = 1 << 16  # one mask element per 16-bit lane of a random word


def drop_threshold(p: float) -> int:
    """How many of the ``2**16`` lane values drop an element: the drop probability is this over ``2**16``."""
    return min(LANES, max(0, round(p * LANES)))


def keep_mask(shape: torch.Size | tuple, p: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """A boolean mask, True where an element is kept, each element kept with probability ``1 - p``."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(-(1 << 63), None)  # every bit random
    lanes = words.view(torch.int16)[:n].view(shape)
    return lanes >= drop_threshold(p) - LANES // 2  # int16 lanes run from -2**15: the lowest k values drop


def drop(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout`` with ``keep_mask``'s masks on CPU (elsewhere ``F.dropout`` itself); not in place."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu":
        return nn.functional.dropout(x, p, training=True)
    k = drop_threshold(p)
    if k >= LANES:
        return torch.zeros_like(x)
    return torch.where(keep_mask(x.shape, p, x.device), x * (LANES / (LANES - k)), 0)


class FastDropout(nn.Dropout):
    """``nn.Dropout`` drawing its masks with ``keep_mask`` on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.inplace or x.device.type != "cpu":
            return super().forward(x)
        return drop(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
              **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: ``sdpa`` unless it would draw dropout masks on the CPU.

    The written-out path is SDPA's own math (softmax of the scaled, masked scores; dropout; times the values) with
    the masks drawn by ``keep_mask``; the mask it receives is ``sdpa``'s (boolean, True = attend, or None).
    """
    if dropout == 0.0 or query.device.type != "cpu" or kwargs.get("output_attentions") or kwargs.get("is_causal") \
            or getattr(module, "is_causal", False) or getattr(module, "num_key_value_groups", 1) > 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query * scale, key.transpose(-2, -1))
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = drop(scores.softmax(-1), dropout)
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


def apply(model: nn.Module) -> int:
    """Convert ``model`` in place (see the module's docstring); returns how many dropout modules now use it."""
    n = 0
    for module in model.modules():
        if type(module) is nn.Dropout:
            module.__class__ = FastDropout
            n += 1
    backbone = getattr(model, "backbone", None)
    config = getattr(backbone, "config", None)
    # transformers' own test of whether a model dispatches through the attention interface (MPNet does not); a
    # transformers without it leaves the attention as it is rather than fail
    dispatches = getattr(type(backbone), "_can_set_attn_implementation", lambda: False)
    if getattr(config, "_attn_implementation", None) == "sdpa" and dispatches():
        backbone.set_attn_implementation(ATTENTION)
    return n


def uses_fast_attention(model: nn.Module) -> bool:
    """Whether ``model``'s backbone attends through ``attention`` (False for MPNet: no attention interface)."""
    config = getattr(getattr(model, "backbone", None), "config", None)
    return getattr(config, "_attn_implementation", None) == ATTENTION
