"""The baseline regularizer (the model's own dropout) and the shared helpers."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NON_INPUT_KEYS = ("target", "index")


def model_inputs(batch: dict) -> dict:
    """The part of a collated batch that the model takes (drops target and row index)."""
    return {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout module's probability to ``p`` (attention dropout reads ``module.p`` too); returns the count."""
    n = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p
            n += 1
    return n


class Regularizer:
    """Plain dropout as the backbone and head were built: the baseline every other regularizer is compared to."""

    name = "baseline"

    def setup(self, model: nn.Module) -> None:
        """Change the freshly loaded model in place, before the optimizer sees its parameters."""

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> torch.Tensor:
        """The training loss of one batch."""
        return loss_fn(model(**model_inputs(batch)).float(), batch["target"])
