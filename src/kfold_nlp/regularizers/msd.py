"""Multi-Sample Dropout (Inoue 2019, arXiv:1905.09788): K dropout masks before one shared head, in one pass.

The backbone runs once; only the cheap ``dropout -> head`` part sees K samples, so the extra cost is a
``K x batch x hidden`` dropout and a K-times-larger head matmul: K masks for nearly the price of one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import LossFn, Regularizer, model_inputs

REDUCTIONS = ("loss", "prediction")


class MultiSampleDropoutLayer(nn.Dropout):
    """Dropout that returns ``K x ...`` independently masked copies in train mode and the input in eval mode.

    A subclass of ``nn.Dropout`` so that ``set_dropout`` (and anything else that walks dropout modules) sees it.
    With ``p == 0`` it is the identity in both modes: no K axis, so the output is the plain network's.
    """

    def __init__(self, k: int = 8, p: float = 0.5):
        super().__init__(p)
        self.k = k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        # One batched op: dropout draws a fresh mask for every element of the (materialised) K-fold copy.
        return F.dropout(x.unsqueeze(0).expand(self.k, *x.shape), self.p, training=True)

    def extra_repr(self) -> str:
        return f"k={self.k}, {super().extra_repr()}"


class MultiSampleDropout(Regularizer):
    """Replace ``model.dropout`` (before the head) with K-sample dropout; the training loss averages over samples.

    ``reduce="loss"`` averages the K per-sample losses (the paper); ``reduce="prediction"`` takes the loss of the
    averaged prediction (common in Kaggle heads; for MSE it is smaller by the variance across samples).
    """

    name = "msd"

    def __init__(self, k: int = 8, p: float = 0.5, reduce: str = "loss"):
        if not (isinstance(k, int) and k >= 1):
            raise ValueError(f"msd k (number of dropout samples) must be an integer >= 1, got {k!r}")
        if not 0 <= p < 1:
            raise ValueError(f"msd p (dropout probability) must be in [0, 1), got {p!r}")
        if reduce not in REDUCTIONS:
            raise ValueError(f"msd reduce must be one of {REDUCTIONS}, got {reduce!r}")
        self.k, self.p, self.reduce = k, p, reduce

    def setup(self, model: nn.Module) -> None:
        model.dropout = MultiSampleDropoutLayer(self.k, self.p)

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> torch.Tensor:
        target = batch["target"]
        pred = model(**model_inputs(batch)).float()
        if pred.dim() == target.dim():  # p == 0: a single deterministic sample
            return loss_fn(pred, target)
        if self.reduce == "prediction":
            return loss_fn(pred.mean(0), target)
        # loss_fn may not be elementwise (e.g. RMSE), so reduce per sample; K tiny ops on batch-sized tensors.
        return torch.stack([loss_fn(p, target) for p in pred]).mean()
