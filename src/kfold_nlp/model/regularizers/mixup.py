"""Mixup for regression (Zhang et al. 2018, arXiv:1710.09412), on the pooled features of a text model.

Texts cannot be interpolated token by token, so the mix happens where the text has become a vector: row i's
pooled features become ``lam * f_i + (1 - lam) * f_perm(i)`` and its labels ``lam * y_i + (1 - lam) * y_perm(i)``,
with ``lam ~ Beta(alpha, alpha)`` drawn once per batch and ``perm`` a random pairing of the batch's rows. The head
then learns to be linear between training texts, which smooths a regressor trained on little data.
"""

from __future__ import annotations

import torch
from torch import nn

from ...config.rules import Choice, Float
from .base import LABEL_KEYS, LossFn, LossParts, Regularizer, model_inputs


class MixupLayer(nn.Module):
    """Stands in for ``model.dropout``: with a pending ``mix = (lam, perm)`` in train mode it returns
    ``[x; lam * x + (1 - lam) * x[perm]]`` (a leading axis of 2: the plain and the mixed features), each through the
    model's own dropout; otherwise it is that dropout.

    Mixing inside the forward keeps every pass going through ``model.__call__``, so DDP synchronises gradients
    (calling ``features``/``output`` on the unwrapped module would not). The plain half costs only a second head
    matmul and lets the trainer log the same ``train/task_loss`` (the unmixed rows' MSE) as every regularizer.
    """

    def __init__(self, dropout: nn.Module):
        super().__init__()
        self.dropout = dropout
        self.mix: tuple[float, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.mix is not None:
            lam, perm = self.mix
            x = torch.stack([x, lam * x + (1 - lam) * x[perm]])
        return self.dropout(x)


class Mixup(Regularizer):
    """Train on mixed pairs: the task's loss of the mixed features' predictions against the mixed labels.

    Every label column the batch carries (target, and standard_error for the tasks that read it) is mixed with
    the same ``lam``, so Mixup composes with every task. ``alpha = 0`` is no mixing at all: exactly the baseline
    loss, with nothing drawn.
    """

    # float32 Beta sampling degenerates outside this range: alpha 1e-30 draws 0.5 every time, 1e39 overflows
    params = {"alpha": Choice(0) | Float(ge=0.01, le=100)}

    def __init__(self, alpha: float = 0.4):
        self.check_params(alpha=alpha)
        self.alpha = alpha

    def setup(self, model: nn.Module) -> None:
        self.layer = model.dropout = MixupLayer(model.dropout)

    def draw(self, n: int, device) -> tuple[float, torch.Tensor]:
        """``lam ~ Beta(alpha, alpha)`` and a random pairing of ``n`` rows."""
        beta = torch.distributions.Beta(torch.tensor(float(self.alpha)), torch.tensor(float(self.alpha)))
        return float(beta.sample()), torch.randperm(n, device=device)

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> LossParts:
        if self.alpha == 0:
            return super().loss(model, batch, loss_fn)
        lam, perm = self.draw(len(batch["target"]), batch["target"].device)
        self.layer.mix = (lam, perm)
        try:
            plain, mixed = model(**model_inputs(batch)).float()
        finally:
            self.layer.mix = None
        labels = {k: lam * batch[k] + (1 - lam) * batch[k][perm] for k in LABEL_KEYS if k in batch}
        lam_t = torch.tensor(lam, device=plain.device)
        return LossParts(loss_fn(mixed, batch | labels), plain, {"mixup_lambda": lam_t})
