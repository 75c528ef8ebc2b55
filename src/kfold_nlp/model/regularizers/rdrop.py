"""R-Drop (Liang et al. 2021, arXiv:2106.14448): two dropout passes of the same batch, penalise their disagreement."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config.rules import Bool, Float
from ..regressor import target_column
from .base import LossFn, LossParts, Regularizer, model_inputs


def consistency(p1: torch.Tensor, p2: torch.Tensor) -> torch.Tensor:
    """How much two dropout passes disagree: R-Drop's penalty, in the form that fits the head.

    Regression (shape ``batch`` or ``batch x 1``): the mean squared gap ``mean((p1 - p2)**2)``. Reading each output
    as the mean of a Gaussian with fixed variance s^2, KL(N(p1, s^2) || N(p2, s^2)) = (p1 - p2)^2 / (2 s^2), so this
    is the paper's KL up to a constant factor.
    Pitfall: the paper's softmax-KL applied to a single scalar output is a softmax over one logit, which is 1
    whatever the value, so the KL is identically zero and R-Drop silently does nothing; never use it here.

    Classification (last dim > 1: logits): the symmetric KL ``0.5 * (KL(P1 || P2) + KL(P2 || P1))`` of the
    softmax distributions, summed over classes and averaged over rows.
    """
    if p1.dim() >= 2 and p1.shape[-1] > 1:
        logp1, logp2 = F.log_softmax(p1, -1).flatten(0, -2), F.log_softmax(p2, -1).flatten(0, -2)
        # kl_div(input=log Q, target=log P) = KL(P || Q)
        kl12 = F.kl_div(logp2, logp1, reduction="batchmean", log_target=True)
        kl21 = F.kl_div(logp1, logp2, reduction="batchmean", log_target=True)
        return 0.5 * (kl12 + kl21)
    return F.mse_loss(p1, p2)


class RDrop(Regularizer):
    """The paper's loss ``L(p1) + L(p2) + alpha * consistency(p1, p2)``, halved so that its scale is one pass's loss.

    With MSE as the task loss this is the paper's objective for a Gaussian head of variance 1/2 (whose negative
    log-likelihood is the squared error and whose symmetric KL between two passes is the squared gap), so
    ``alpha`` is the paper's alpha. The halving changes nothing for Adam-type optimizers and keeps ``train/loss``
    on the scale of the other regularizers'.

    The two passes are one forward of the batch concatenated with itself (``[x; x]``): dropout masks differ
    between the halves, and one large batch uses the hardware better than two sequential forwards (which
    ``single_forward=False`` runs instead, for comparison; same loss). Assumes plain dropout, so the model's
    output has the batch as its first dim (not a Multi-Sample-Dropout ``K x batch``).
    """

    params = {"alpha": Float(ge=0), "single_forward": Bool}

    def __init__(self, alpha: float = 1.0, single_forward: bool = True):
        self.check_params(alpha=alpha, single_forward=single_forward)
        self.alpha, self.single_forward = alpha, single_forward

    def predictions(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Two dropout-noisy predictions of the same batch."""
        inputs = model_inputs(batch)
        if not self.single_forward:
            return model(**inputs).float(), model(**inputs).float()
        n = batch["target"].shape[0]
        pred = model(**{k: torch.cat([v, v]) for k, v in inputs.items()}).float()
        if pred.shape[0] != 2 * n:
            raise ValueError(f"R-Drop expects the batch as the output's first dim, got shape {tuple(pred.shape)}")
        return pred[:n], pred[n:]

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> LossParts:
        p1, p2 = self.predictions(model, batch)
        # Only the target column: a multi-task head's (target, standard_error) pair is not a pair of logits.
        gap = consistency(target_column(p1, model), target_column(p2, model))
        total = 0.5 * (loss_fn(p1, batch) + loss_fn(p2, batch) + self.alpha * gap)
        return LossParts(total, torch.stack([p1, p2]), {"rdrop_consistency": gap})
