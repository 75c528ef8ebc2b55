"""Which weights a fold keeps (``trainer.select``): the best evaluation's, the last, an EMA or a SWA of them.

``best`` picks the evaluation with the lowest validation MSE, on the very rows the CV then scores: the CV is the
minimum of a noisy curve and flatters the model by an amount only a holdout measures (``cv.holdout``). ``best_epoch``
picks among the epochs' last evaluations only (fewer chances to be lucky). ``last``, ``ema`` and ``swa`` choose
nothing by the validation rows: the final weights, their exponential moving average over the optimizer steps, or
the plain average of the weights at the last ``trainer.swa_evals`` planned evaluations. The averages are
``torch.optim.swa_utils.AveragedModel``'s.

``trainer.also_select`` lists more policies to score on the same training run: they change nothing in the
trajectory (evaluations draw no random numbers), so one run measures what each policy would have reported.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

POLICIES = ("best", "best_epoch", "last", "ema", "swa")


def _copy(module: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


class Policy:
    """One way of choosing a fold's weights; ``mse``/``pred``/``step`` are those of the chosen weights on the
    validation rows once known (an average's are known only after ``final`` weights are evaluated)."""

    name = ""

    def __init__(self):
        self.mse, self.pred, self.step = math.inf, None, 0

    def stepped(self, model: torch.nn.Module) -> None:
        """After every optimizer step."""

    def evaluated(self, model, step: int, mse: float, pred: np.ndarray, epoch_end: bool) -> None:
        """After every evaluation (always of the trained weights, never of an average)."""

    def final(self, model: torch.nn.Module) -> dict:
        """The chosen weights, a state dict on the CPU."""
        return _copy(model)

    def known(self, final_step: int) -> bool:
        """Whether ``pred`` is the validation prediction of ``final``'s weights already (the fold ended at
        ``final_step``)."""
        return self.pred is not None

    def state(self) -> tuple[dict | None, dict]:
        """(tensors, JSON) a snapshot keeps."""
        return None, {"mse": self.mse, "step": self.step}

    def restore(self, tensors: dict | None, meta: dict, pred: np.ndarray | None) -> None:
        self.mse, self.step, self.pred = meta["mse"], meta["step"], pred


class Best(Policy):
    """The weights of the lowest validation MSE so far (of every evaluation, or of the epochs' last ones)."""

    def __init__(self, epoch_end_only: bool = False):
        super().__init__()
        self.name = "best_epoch" if epoch_end_only else "best"
        self.epoch_end_only, self.weights = epoch_end_only, None

    def evaluated(self, model, step, mse, pred, epoch_end):
        if (epoch_end or not self.epoch_end_only) and mse < self.mse:
            self.mse, self.step, self.pred, self.weights = mse, step, pred, _copy(model)

    def final(self, model):
        return self.weights if self.weights is not None else _copy(model)

    def state(self):
        return self.weights, {"mse": self.mse, "step": self.step}

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self.weights = tensors


class Last(Policy):
    """The final weights; their validation prediction is the last evaluation's (the fold always ends on one)."""

    name = "last"

    def evaluated(self, model, step, mse, pred, epoch_end):
        self.mse, self.step, self.pred = mse, step, pred

    def known(self, final_step):
        return self.pred is not None and self.step == final_step


class Averaged(Policy):
    """A ``swa_utils.AveragedModel`` of the weights, scored on the validation rows once, when the fold ends."""

    def __init__(self, model: torch.nn.Module, **kwargs):
        super().__init__()
        self.averaged = AveragedModel(model, **kwargs)  # on the model's device: the trainer evaluates it there
        self.updates_at = -1  # the optimizer step of the last update (``known``: scored since)

    def known(self, final_step):
        return self.pred is not None and self.step == self.updates_at == final_step

    def final(self, model):
        if int(self.averaged.n_averaged) == 0:  # stopped early, before the average's first member
            self.averaged.update_parameters(model)
        return _copy(self.averaged.module)

    def state(self):
        return _copy(self.averaged), {"mse": self.mse, "step": self.step, "updates_at": self.updates_at}

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self.averaged.load_state_dict(tensors)
        self.updates_at = meta["updates_at"]


class Ema(Averaged):
    """theta_t = d * theta_(t-1) + (1 - d) * w_t over the optimizer steps, starting from the first step's weights."""

    name = "ema"

    def __init__(self, model, decay: float):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self._step = 0

    def stepped(self, model):
        self.averaged.update_parameters(model)
        self._step += 1
        self.updates_at = self._step

    def restore(self, tensors, meta, pred):
        super().restore(tensors, meta, pred)
        self._step = meta["updates_at"]


class Swa(Averaged):
    """The mean of the weights at the planned evaluations ``at`` (the last ``trainer.swa_evals`` of the fold)."""

    name = "swa"

    def __init__(self, model, at: set[int]):
        super().__init__(model)
        self.at = at

    def evaluated(self, model, step, mse, pred, epoch_end):
        if step in self.at and step != self.updates_at:
            self.averaged.update_parameters(model)
            self.updates_at = step


def make(name: str, model: torch.nn.Module, tcfg, planned: list[int]) -> Policy:
    """Policy ``name`` for a fold whose evaluations are planned at the optimizer steps ``planned``."""
    if name == "best" or name == "best_epoch":
        return Best(epoch_end_only=name == "best_epoch")
    if name == "last":
        return Last()
    if name == "ema":
        return Ema(model, tcfg.get("ema_decay", 0.98))
    if name == "swa":
        return Swa(model, set(planned[-tcfg.get("swa_evals", 4):]))
    raise ValueError(f"trainer.select={name}: must be one of {', '.join(POLICIES)}")


def policies(tcfg) -> list[str]:
    """The fold's policy first, then the others ``trainer.also_select`` scores, each once."""
    names = [tcfg.get("select", "best"), *(tcfg.get("also_select") or [])]
    return list(dict.fromkeys(names))
