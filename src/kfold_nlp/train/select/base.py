"""What every selection policy is: the hooks the training loop calls, the state a snapshot keeps, and the averaging
base the EMA and the SWA share."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel


def copy_state(module: torch.nn.Module) -> dict:
    """``module``'s state dict, detached and copied to the CPU (what a fold keeps and a snapshot saves)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class Policy:
    """One way of choosing a fold's weights; ``mse``/``pred``/``step`` are those of the chosen weights on the
    validation rows once known (an average's are known only after ``final`` weights are evaluated).

    The registry builds every policy as ``cls(model, planned, **params)`` (``planned``: the optimizer steps of the
    fold's planned evaluations; ``params``: its ``conf/select/<name>.yaml``) and names it after that file.
    """

    name = ""  # the YAML's name (``trainer.select``), set by the registry
    chosen = ""  # how a fold's line names the weights it kept: "<chosen> <step> of <steps>"
    needs_evaluations = False  # chooses by, or averages at, evaluations: a refit has none and keeps ``last`` instead
    reads_scores = False  # chooses by the evaluations' scores: they are computed at every planned evaluation

    def __init__(self, model: torch.nn.Module | None = None, planned=()):
        self.mse, self.pred, self.step = math.inf, None, 0

    def stepped(self, model: torch.nn.Module) -> None:
        """After every optimizer step."""

    def evaluated(self, model, step: int, mse: float, pred: np.ndarray, epoch_end: bool) -> None:
        """After every planned evaluation (always of the trained weights, never of an average); ``mse`` and ``pred``
        are None where the pass was skipped (no policy reads scores, no early stopping, ``trainer.eval_curve``
        false)."""

    def final(self, model: torch.nn.Module) -> dict:
        """The chosen weights, a state dict on the CPU."""
        return copy_state(model)

    def known(self, final_step: int) -> bool:
        """Whether ``pred`` is the validation prediction of ``final``'s weights already (the fold ended at
        ``final_step``)."""
        return self.pred is not None

    def state(self) -> tuple[dict | None, dict]:
        """(tensors, JSON) a snapshot keeps."""
        return None, {"mse": self.mse, "step": self.step}

    def restore(self, tensors: dict | None, meta: dict, pred: np.ndarray | None) -> None:
        self.mse, self.step, self.pred = meta["mse"], meta["step"], pred


class Averaged(Policy):
    """A ``swa_utils.AveragedModel`` of the weights, scored on the validation rows once, when the fold ends."""

    def __init__(self, model: torch.nn.Module, planned=(), **kwargs):
        super().__init__(model, planned)
        self.averaged = AveragedModel(model, **kwargs)  # on the model's device: the trainer evaluates it there
        self.updates_at = -1  # the optimizer step of the last update (``known``: scored since)

    def known(self, final_step):
        return self.pred is not None and self.step == self.updates_at == final_step

    def final(self, model):
        if int(self.averaged.n_averaged) == 0:  # stopped early, before the average's first member
            self.averaged.update_parameters(model)
        return copy_state(self.averaged.module)

    def state(self):
        return copy_state(self.averaged), {"mse": self.mse, "step": self.step, "updates_at": self.updates_at}

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self.averaged.load_state_dict(tensors)
        self.updates_at = meta["updates_at"]
