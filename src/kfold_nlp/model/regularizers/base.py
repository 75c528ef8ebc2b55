"""The baseline regularizer (the model's own dropout) and the shared helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ...config.rules import check_params

# The task's loss (``tasks.Task.loss``): (predictions, batch) -> scalar. It takes the batch, not only the target,
# because some tasks read other label columns (standard_error); Mixup passes a batch with mixed labels.
LossFn = Callable[[torch.Tensor, dict], torch.Tensor]


LABEL_KEYS = ("target", "standard_error")  # per-row labels a batch may carry (standard_error when the task needs it)


NON_INPUT_KEYS = (*LABEL_KEYS, "index")


def model_inputs(batch: dict) -> dict:
    """The part of a collated batch that the model takes (drops the labels and the row index)."""
    return {k: v for k, v in batch.items() if k not in NON_INPUT_KEYS}


def set_dropout(model: nn.Module, p: float) -> int:
    """Set every dropout module's probability to ``p`` (attention dropout reads ``module.p`` too); returns the count."""
    n = 0
    for module in model.modules():
        if isinstance(module, nn.modules.dropout._DropoutNd):
            module.p = p
            n += 1
    return n


@dataclass
class LossParts:
    """One batch's training loss and what it is made of.

    ``loss`` is what the optimizer minimises; ``pred`` holds every training-mode prediction the regularizer made
    (``batch``, or ``passes x batch``: R-Drop's two, MSD's K; Mixup's of the unmixed rows; a multi-output head adds
    a last axis), so the trainer can log the same plain MSE of the target column for every regularizer and task
    (``train/task_loss``); ``terms`` are the regularizer's own extra terms, logged on their own.
    """

    loss: torch.Tensor
    pred: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class Regularizer:
    """Plain dropout as the backbone and head were built: the baseline every other regularizer is compared to.

    ``params`` maps each constructor argument (each key of the regularizer's YAML) to its type (``config.rules``): the
    config is checked against it before a run starts, and the constructor checks it again for direct use.
    """

    params: dict = {}
    acts_on_backbone_weights = False  # it changes how the backbone's own weights train: model.peft=lora freezes them

    def check_params(self, **values) -> None:
        check_params("regularizer", self.params, values)

    def setup(self, model: nn.Module) -> None:
        """Change the freshly loaded model in place, before the optimizer sees its parameters."""

    def loss(self, model: nn.Module, batch: dict, loss_fn: LossFn) -> LossParts:
        """The training loss of one batch; ``loss_fn(pred, batch)`` is the task's loss."""
        pred = model(**model_inputs(batch)).float()
        return LossParts(loss_fn(pred, batch), pred)
