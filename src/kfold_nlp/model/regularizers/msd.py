"""Multi-Sample Dropout (Inoue 2019, arXiv:1905.09788): K dropout masks before one shared head, in one pass.

The backbone runs once; only the cheap ``dropout -> head`` part sees K samples, so the extra cost is a
``K x batch x hidden`` dropout and a K-times-larger head matmul: K masks for nearly the price of one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config.rules import PROBABILITY, Choice, Int
from ..regressor import head_outputs
from .base import LossFn, LossParts, Regularizer, model_inputs

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

    params = {"k": Int(ge=1), "p": PROBABILITY, "reduce": Choice(*REDUCTIONS)}

    def __init__(self, k: int = 8, p: float = 0.5, reduce: str = "loss"):
        self.check_params(k=k, p=p, reduce=reduce)
        self.k, self.p, self.reduce = k, p, reduce

    def setup(self, model: nn.Module) -> None:
        model.dropout = MultiSampleDropoutLayer(self.k, self.p)

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> LossParts:
        pred = model(**model_inputs(batch)).float()
        # No K axis when p == 0 (a single deterministic sample); a multi-output head adds a last axis.
        if pred.dim() == batch["target"].dim() + (head_outputs(model) > 1):
            return LossParts(loss_fn(pred, batch), pred)
        if self.reduce == "prediction":
            return LossParts(loss_fn(pred.mean(0), batch), pred)
        # loss_fn may not be elementwise (e.g. RMSE), so reduce per sample; K tiny ops on batch-sized tensors.
        return LossParts(torch.stack([loss_fn(p, batch) for p in pred]).mean(), pred)
