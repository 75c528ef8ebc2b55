"""Training tasks: what the head predicts and the loss that trains it (``conf/task/*.yaml``, ``task=...``).

A task is orthogonal to the regularizer: the regularizer decides how a batch becomes predictions (one pass, K
dropout samples, two passes, mixed features) and calls the task's ``loss(pred, batch)`` on them. So every task
composes with every regularizer. Only the target is ever scored, bagged or predicted: a multi-output head's
column 0 is the target (``model.target_column``), and OOF, test predictions and ``make predict`` do not change.

- ``single`` (``Task``): MSE on the target, the baseline.
- ``multitask`` (``MultiTask``): the head also predicts ``standard_error``; Kendall, Gal & Cipolla (2018) weigh
  each task's MSE by a learned log-variance instead of a hand-tuned weight.
- ``gaussian`` (``GaussianNLL``): the negative log-likelihood of the target under N(pred, se^2), each row's
  annotator ``standard_error`` taken as its known noise: rows the annotators agreed on count more.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config.rules import Float, check_params
from ..data.tables import first_bad_row
from ..errors import ConfigError

TERM_NAMES = ("target", "se")  # a multi-task head's columns, as named in the logged terms


class Task:
    """One output, MSE on the target: the plain regression every other task is compared to.

    ``n_outputs`` is the head's width; ``columns`` are the label columns besides ``target`` that the loss reads
    (the data must have them in every row, and the training batches carry them); ``params`` maps each constructor
    argument (each key of the task's YAML) to its type (``config.rules``), as for regularizers.
    """

    name = "single"
    n_outputs = 1
    columns: tuple[str, ...] = ()
    params: dict = {}

    def check_params(self, **values) -> None:
        check_params("task", self.params, values)

    def setup(self, model) -> None:
        """Bind to the fold's freshly built model (before the optimizer sees its parameters)."""

    def loss(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """The training loss of predictions ``pred`` (``batch`` or ``batch x n_outputs``) against ``batch``'s labels."""
        return (pred - batch["target"]).pow(2).mean()

    def terms(self, pred: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Values to log as ``train/<name>`` at each evaluation (detached); ``pred`` may have leading pass axes."""
        return {}


class MultiTask(Task):
    """Predict target and standard_error; total loss ``sum_i exp(-s_i) L_i / 2 + s_i / 2`` (Kendall et al. 2018).

    ``L_i`` is column i's MSE and ``s_i = log sigma_i^2`` its learned log-variance (``model.task_weights``, in the
    head's parameter group, no weight decay, starting at 0: weights 1/2 each). This is the Gaussian likelihood of
    both tasks with learned noise: at the optimum ``s_i = log L_i``, so each task's gradient is scaled by
    ``1 / L_i``, and no task dominates the shared backbone through its units. The ``s_i / 2`` term keeps the
    weights from collapsing to 0. The log-variances move by about ``lr`` per Adam step, so with a fine-tuning lr
    (5e-5) they stay near 0 for a short run: give the head a larger ``optimizer.head_lr`` for them to adapt.
    """

    name = "multitask"
    n_outputs = 2
    columns = ("standard_error",)

    def setup(self, model) -> None:
        self.log_vars = model.task_weights.log_vars

    def task_losses(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        """``[L_target, L_se]``: each column's MSE."""
        labels = torch.stack([batch["target"], batch["standard_error"]], -1)
        return (pred - labels).pow(2).flatten(0, -2).mean(0)

    def loss(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        s = self.log_vars
        return (torch.exp(-s) * self.task_losses(pred, batch) / 2 + s / 2).sum()

    def terms(self, pred: torch.Tensor, batch: dict) -> dict[str, torch.Tensor]:
        """Each log-variance, its weight ``exp(-s_i)`` and the standard_error column's MSE (the target's is
        ``train/task_loss``)."""
        s = self.log_vars.detach()
        out = {f"mtl_logvar_{name}": s[i] for i, name in enumerate(TERM_NAMES)}
        out |= {f"mtl_weight_{name}": torch.exp(-s[i]) for i, name in enumerate(TERM_NAMES)}
        return out | {"mtl_mse_se": self.task_losses(pred.detach(), batch)[1]}


class GaussianNLL(Task):
    """``mean((pred - y)^2 / (2 max(se, min_se)^2))``: the target's negative log-likelihood under N(pred, se^2).

    Why this form: the annotators' standard_error is a known, per-row noise level, so the likelihood with that
    variance weighs each row by its certainty (weighted least squares); its ``log se`` term is a constant and is
    dropped. The alternative of strong CommonLit solutions, a KL between N(y, se) and a predicted N(pred, sigma),
    needs a second output for sigma, and lets the model down-weight rows it finds hard by raising its own sigma;
    here the weights come from the data alone and the head stays the plain one. ``min_se`` floors the noise:
    CommonLit's anchor text has standard_error 0 (its target is 0 by definition), which would be an infinite
    weight; the default 0.25, about half the typical se of 0.49, caps any row at about 4x a typical row's weight.
    The loss is about ``2 x MSE`` on CommonLit's scale; ``train/task_loss`` stays the plain MSE.
    """

    name = "gaussian"
    columns = ("standard_error",)
    params = {"min_se": Float(gt=0)}

    def __init__(self, min_se: float = 0.25):
        self.check_params(min_se=min_se)
        self.min_se = min_se

    def loss(self, pred: torch.Tensor, batch: dict) -> torch.Tensor:
        variance = batch["standard_error"].clamp(min=self.min_se).pow(2)
        return ((pred - batch["target"]).pow(2) / (2 * variance)).mean()


def task_class(cfg) -> type[Task]:
    """The class of the composed config's ``task`` (``Task`` for run folders from before tasks existed)."""
    from hydra.utils import get_class

    return get_class(cfg.task._target_) if cfg.get("task") is not None else Task


def n_outputs(cfg) -> int:
    """How many columns the head of a run with this config predicts (what a checkpoint must be loaded into)."""
    return task_class(cfg).n_outputs


def check_columns(cfg, table) -> None:
    """Refuse a train table that lacks a label column the task needs (or has it empty in some row): one line."""
    cls = task_class(cfg)
    for column in cls.columns:
        if column not in table.columns:
            raise ConfigError(f"{cfg.data.path}: no {column!r} column, which task={cls.name} needs (use task=single)")
        missing = table[column].isna()
        if missing.any():
            raise ConfigError(f"{cfg.data.path}: {column!r} missing in {int(missing.sum())} row(s), first id "
                              f"{table['id'][missing].iloc[0]!r}; task={cls.name} needs it in every row")
        # A noise level: 0 is CommonLit's anchor (GaussianNLL floors it at min_se), but a negative one would be
        # floored silently and an infinite one would drop its row from the loss (or diverge a multi-task head).
        bad = (table[column] < 0) | np.isinf(table[column])
        if bad.any():
            raise first_bad_row(Path(cfg.data.path), table["id"], bad,
                             f"negative or infinite {column!r} (task={cls.name} needs a finite value >= 0)")
