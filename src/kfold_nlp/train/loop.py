"""One fold's training loop: accumulation, mixed precision, evaluation every N steps, early stopping, the choice of
the weights it keeps (``selection``)."""

from __future__ import annotations

import itertools
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .. import metrics
from ..errors import DataError, Exit
from ..model.optim import build_optimizer, build_scheduler, weight_penalty
from ..model.regressor import target_column
from ..model.regularizers.base import model_inputs
from ..model.tasks import Task
from . import fast_dropout, selection, snapshot
from .compiled import compile_backbone
from .seeds import stream_seed


@torch.no_grad()
def predict(model, loader, accelerator: Accelerator) -> np.ndarray:
    """Target predictions in the dataset's row order (the loader may be length-sorted and sharded)."""
    model.eval()
    preds, index = [], []
    for batch in loader:
        with accelerator.autocast():
            out = target_column(model(**model_inputs(batch)), model)
        out, idx = accelerator.gather_for_metrics((out.float(), batch["index"]))
        preds.append(out.cpu().numpy())
        index.append(idx.cpu().numpy())
    result = np.empty(len(loader.dataset))
    result[np.concatenate(index)] = np.concatenate(preds)
    return result


@dataclass
class FoldResult:
    """What a fold's training returns: ``best_*``, ``val_pred`` and ``best_state`` are those of the weights the
    fold's policy (``trainer.select``) chose; ``selection`` scores every policy scored on this run."""

    best_mse: float = math.inf
    best_step: int = 0
    steps: int = 0
    planned_steps: int = 0  # epochs x steps per epoch: more than ``steps`` when early stopping ended the fold
    val_pred: np.ndarray | None = None
    best_state: dict | None = None
    holdout_pred: dict = field(default_factory=dict)  # policy -> its weights' predictions of the holdout rows
    val_preds: dict = field(default_factory=dict)  # policy -> its weights' predictions of the validation rows
    selection: dict = field(default_factory=dict)  # policy -> {val_mse, step[, holdout_mse]}
    train_time: float = 0.0
    eval_time: float = 0.0  # seconds in validation passes
    keep_time: float = 0.0  # seconds copying the best state
    snapshot_time: float = 0.0  # seconds writing snapshots
    history: list = field(default_factory=list)
    resumed_from: int | None = None  # the step of the snapshot this fold continued from

    @property
    def best_rmse(self) -> float:
        return math.sqrt(self.best_mse)


def eval_points(steps_per_epoch: int, eval_every: int | None, evals_per_epoch: int) -> set[int] | None:
    """The steps within an epoch (1-based) after which to evaluate; None: every ``eval_every`` global steps.

    Without ``eval_every``, ``evals_per_epoch`` evenly spaced points, the epoch's last step always among them: the
    evaluation cost is then a fixed share of training whatever the data size (a CommonLit fold evaluated every 10
    steps spent about a third of its time in evaluation).
    """
    if eval_every:
        return None
    n = min(evals_per_epoch, steps_per_epoch)
    return {math.ceil(i * steps_per_epoch / n) for i in range(1, n + 1)}


def planned_evaluations(steps_per_epoch: int, epochs: int, eval_every: int | None, at: set[int] | None) -> list[int]:
    """The optimizer steps of every evaluation of a fold that is not stopped early, in order."""
    return [e * steps_per_epoch + s for e in range(epochs) for s in range(1, steps_per_epoch + 1)
            if s == steps_per_epoch or (s in at if at is not None else (e * steps_per_epoch + s) % eval_every == 0)]


def micro_batch_groups(loader, k: int):
    """The loader's batches in lists of ``k`` (the epoch's last list may be shorter): one optimizer step each."""
    batches = iter(loader)
    while group := list(itertools.islice(batches, k)):
        yield group


class Diverged(RuntimeError):
    """A non-finite training loss or validation MSE: the fold stops at once and writes nothing that looks done."""

    exit = Exit.DIVERGED

    def __init__(self, fold, step: int, what: str, value: float, precision: str = "fp32"):
        hint = "lower optimizer.lr" + (" or use trainer.precision=fp32" if precision != "fp32" else "")
        super().__init__(f"fold {fold} diverged at step {step} ({what} {value}); {hint}")


def optimizer_step(model, regularizer, group: list[dict], optimizer, accelerator: Accelerator, task: Task,
                   max_grad_norm: float | None = None, penalty=None) -> dict[str, float]:
    """One optimizer step over a group of micro-batches; returns the group's mean ``loss`` (what was minimised,
    penalty excluded), ``task_loss`` (the plain MSE of the training-mode target predictions, comparable across
    regularizers and tasks), the regularizer's own terms and the task's (``task.terms``).

    Each micro-batch's mean loss is weighted by its share of the group's rows (over all processes, DDP averaging
    undone), so the accumulated gradient is exactly that of one batch of all the rows, a short last group included.
    The penalty's weights sum to 1, so it counts once per step. Only the last micro-batch all-reduces under DDP;
    clipping sees the whole accumulated gradient.
    """
    sizes = [len(batch["target"]) for batch in group]
    rows = sum(sizes)
    total = accelerator.reduce(torch.tensor(rows, device=accelerator.device), reduction="sum").item()
    # accelerator.backward divides by its gradient_accumulation_steps (1 here, but a process-wide setting): undo it.
    scale = accelerator.num_processes * accelerator.gradient_accumulation_steps / total
    means: dict[str, float] = {}
    for i, (batch, size) in enumerate(zip(group, sizes)):
        with accelerator.no_sync(model) if i < len(group) - 1 else nullcontext():
            parts = regularizer.loss(model, batch, task.loss)
            objective = parts.loss + penalty() if penalty is not None else parts.loss
            accelerator.backward(objective * (size * scale))
        task_mse = (target_column(parts.pred.detach(), model) - batch["target"]).pow(2).mean()
        terms = parts.terms | task.terms(parts.pred, batch)
        values = torch.stack([parts.loss.detach(), task_mse, *(t.detach() for t in terms.values())]).float().tolist()
        for key, value in zip(["loss", "task_loss", *terms], values):  # one host sync per micro-batch
            means[key] = means.get(key, 0.0) + value * size / rows
    if max_grad_norm:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    optimizer.zero_grad()
    return means


@dataclass
class LoopState:
    """Where a fold's training stands: what a snapshot's ``state.json`` keeps under these names."""

    step: int = 0  # optimizer steps so far
    epoch: int = 0
    batch: int = 0  # this process's micro-batches of ``epoch`` already trained
    bad_evals: int = 0  # evaluations since the best one (early stopping)
    stop: bool = False
    running: list = field(default_factory=list)  # each step's losses since the last evaluation

    @classmethod
    def of(cls, saved: dict) -> LoopState:
        return cls(**{f.name: saved[f.name] for f in fields(cls)})


@dataclass
class FoldTraining:
    """What one fold's evaluations, snapshots and resumed epochs share; ``train_fold`` holds the loop itself."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    accelerator: Accelerator
    val_loader: DataLoader | None  # None: a refit, no validation rows
    val_target: np.ndarray | None
    cfg: object  # the whole config (``trainer`` and ``seed`` are read)
    fold: int
    log: object
    snapshot_dir: object
    extra_state: dict
    policies: list  # selection.Policy: the fold's own first, then those of ``trainer.also_select``
    holdout_loader: DataLoader | None = None
    result: FoldResult = field(default_factory=FoldResult)
    state: LoopState = field(default_factory=LoopState)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model)

    @property
    def scored(self) -> bool:
        """Whether evaluations compute a validation score: something reads it (a policy choosing by it, early
        stopping) or ``trainer.eval_curve`` asks for the curve. Otherwise a planned evaluation only logs the
        training losses and tells the policies the step (``swa`` averages the weights there); each policy's final
        weights are scored once, when the fold ends."""
        tcfg = self.cfg.trainer
        return bool(tcfg.get("eval_curve", True) or tcfg.patience is not None
                    or any(p.reads_scores for p in self.policies))

    def evaluate(self, bar, epoch_end: bool) -> bool:
        """Validate after the current step (where ``scored``), log the mean training losses since the last
        evaluation and tell each policy (``best`` keeps its state); True when early stopping says stop."""
        state, result, tcfg = self.state, self.result, self.cfg.trainer
        train = {k: float(np.mean([r[k] for r in state.running])) for k in state.running[0]}
        state.running = []
        if not self.scored:
            self.log({**{f"train/{k}": v for k, v in train.items()}, "train/lr": self.scheduler.get_last_lr()[0]},
                     state.step)
            for policy in self.policies:
                policy.evaluated(self.unwrapped, state.step, None, None, epoch_end)
            bar.set_postfix(loss=f"{train['loss']:.4f}")
            return False
        began = time.perf_counter()
        pred = predict(self.model, self.val_loader, self.accelerator)
        result.eval_time += time.perf_counter() - began
        mse = metrics.mse(self.val_target, pred)
        if not math.isfinite(mse):
            raise Diverged(self.fold, state.step, "validation MSE", mse, tcfg.precision)
        self.model.train()
        self.log({**{f"train/{k}": v for k, v in train.items()}, "val/mse": mse, "val/rmse": math.sqrt(mse),
                  "train/lr": self.scheduler.get_last_lr()[0]}, state.step)
        result.history.append({"step": state.step, "val_mse": mse})
        began = time.perf_counter()
        for policy in self.policies:
            policy.evaluated(self.unwrapped, state.step, mse, pred, epoch_end)
        result.keep_time += time.perf_counter() - began
        # early stopping follows the best evaluation so far, whatever the fold keeps
        if mse < result.best_mse:
            result.best_mse, state.bad_evals = mse, 0
        else:
            state.bad_evals += 1
        bar.set_postfix(loss=f"{train['loss']:.4f}", val_rmse=f"{math.sqrt(mse):.4f}", best=f"{result.best_rmse:.4f}")
        return tcfg.patience is not None and state.bad_evals >= tcfg.patience

    def choose(self) -> None:
        """Each policy's weights, scored on the validation rows (unless its last evaluation already did) and the
        holdout rows; the fold's own policy last, so that the model ends with the weights it keeps."""
        result, step = self.result, self.state.step
        chosen = [(policy, policy.final(self.unwrapped)) for policy in self.policies]
        for policy, weights in reversed(chosen):
            self.unwrapped.load_state_dict(weights)
            if not policy.known(step) and self.val_loader is not None:
                began = time.perf_counter()
                policy.pred = predict(self.model, self.val_loader, self.accelerator)
                policy.mse, policy.step = metrics.mse(self.val_target, policy.pred), step
                result.eval_time += time.perf_counter() - began
            scores = {"val_mse": policy.mse, "step": policy.step}
            result.val_preds[policy.name] = policy.pred
            if self.holdout_loader is not None:
                began = time.perf_counter()
                result.holdout_pred[policy.name] = predict(self.model, self.holdout_loader, self.accelerator)
                result.eval_time += time.perf_counter() - began
            result.selection[policy.name] = scores
        own, weights = chosen[0]
        result.best_mse, result.best_step, result.val_pred, result.best_state = own.mse, own.step, own.pred, weights
        self.model.train()

    def save_snapshot(self, epoch_start: torch.Tensor | None) -> None:
        began, result = time.perf_counter(), self.result
        if self.accelerator.is_main_process:
            parts = {p.name: (p, *p.state()) for p in self.policies}  # (policy, tensors, JSON)
            snapshot.save(self.snapshot_dir, model_state=self.unwrapped.state_dict(),
                          optimizer=self.optimizer, scheduler=self.scheduler, sampler_state=epoch_start,
                          selections={name: (tensors, p.pred) for name, (p, tensors, _) in parts.items()},
                          state=asdict(self.state) | self.extra_state | {
                              "best_mse": result.best_mse, "history": result.history,
                              "select": {name: meta for name, (_, _, meta) in parts.items()}})
        self.accelerator.wait_for_everyone()
        result.snapshot_time += time.perf_counter() - began

    def restore(self, saved: snapshot.Snapshot) -> None:
        """Continue where the snapshot left off (the random streams: ``epoch_batches``)."""
        self.accelerator.unwrap_model(self.model).load_state_dict(saved.model)
        self.optimizer.load_state_dict(saved.optimizer)
        self.scheduler.load_state_dict(saved.scheduler)
        self.state = LoopState.of(saved.state)
        result = self.result
        result.best_mse, result.history, result.resumed_from = saved.state["best_mse"], saved.state["history"], \
            self.state.step
        metas = saved.state.get("select") or {"best": {"mse": saved.state["best_mse"],
                                                        "step": saved.state["best_step"]}}  # an older snapshot
        for policy in self.policies:
            if policy.name not in metas:  # the config is checked on resume: only a snapshot put there by hand
                raise DataError(f"{self.snapshot_dir / snapshot.NAME}: taken without the selection policy "
                                f"{policy.name}; delete it to train fold {self.fold} again")
            tensors, pred = saved.selections.get(policy.name, (None, None))
            policy.restore(tensors, metas[policy.name], pred)

    def epoch_batches(self, loader, generator, epoch: int, skip: int, saved: snapshot.Snapshot | None):
        """The epoch's batches after its first ``skip`` (those trained before the snapshot ``saved``), and the state
        of the sampler's generator at the epoch's start (it fixes the epoch's order; snapshots keep it).

        The skipped batches are neither loaded nor collated (``skip_first_batches`` drops their indices); the
        epoch's iterator is started before the random streams are restored, so that whatever starting it draws
        (the loaders have generators of their own: ``make_loader``) comes before the restored state, as in the
        uninterrupted run.
        """
        if skip and generator is not None:
            generator.set_state(saved.rng["tensors"]["sampler"])
        epoch_start = generator.get_state().clone() if generator is not None else None
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        if not skip:
            return iter(loader), epoch_start
        batches = iter(self.accelerator.skip_first_batches(loader, skip))
        first = next(batches, None)  # None: the snapshot was the epoch's last step
        snapshot.set_rng_state(saved.rng["tensors"], saved.rng["plain"])
        if rank := self.accelerator.process_index:  # ranks other than 0 need their own streams (dropout masks differ)
            torch.manual_seed(stream_seed(self.cfg.seed, self.fold, rank, self.state.step))
        return itertools.chain([] if first is None else [first], batches), epoch_start


def train_fold(model, regularizer, train_loader, val_loader, val_target, cfg, accelerator,
               log=lambda metrics, step: None, fold=0, task: Task | None = None, snapshot_dir=None,
               extra_state: dict | None = None, saved: snapshot.Snapshot | None = None, holdout_loader=None,
               max_steps: int | None = None, label: str | None = None):
    """Train one fold and keep the weights ``trainer.select`` chooses (in memory; the caller saves them).

    ``task`` (set up on ``model``) gives the loss; default: MSE on the target. With ``snapshot_dir`` (the fold's
    folder) the whole training state is saved every ``trainer.snapshot_every`` optimizer steps and at each epoch's
    end, and a snapshot found there is continued from, mid-epoch: the steps before it are not trained again.
    ``extra_state`` (JSON) is saved with every snapshot (the fold's W&B run id); ``saved``: the snapshot already
    loaded from ``snapshot_dir`` by the caller (which needed its W&B run id first). ``holdout_loader``: rows no
    policy may look at before the fold ends; each policy's weights predict them then. ``val_loader`` None (a refit
    on every row): no evaluation, the schedule planned over ``trainer.epochs`` and the training stopped after
    ``max_steps`` optimizer steps. ``label``: the progress bar's (default ``fold <k>``).

    Raises ``Diverged`` at the first non-finite training loss or validation MSE.
    """
    tcfg, task = cfg.trainer, task or Task()
    if tcfg.get("compile"):
        compile_backbone(model)
    elif tcfg.get("fast_dropout"):
        fast_dropout.apply(model)
    optimizer = build_optimizer(cfg.optimizer, model)
    penalty = weight_penalty(model, tcfg.get("penalty"), tcfg.get("penalty_weight", 0.0))
    generator = getattr(train_loader.sampler, "generator", None)  # the sampler's: its state fixes an epoch's order
    if val_loader is not None:
        model, optimizer, train_loader, val_loader = accelerator.prepare(model, optimizer, train_loader, val_loader)
    else:
        model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if holdout_loader is not None:
        holdout_loader = accelerator.prepare(holdout_loader)
    steps_per_epoch = math.ceil(len(train_loader) / tcfg.grad_accum)
    at = eval_points(steps_per_epoch, tcfg.eval_every, tcfg.evals_per_epoch)
    scheduler = build_scheduler(cfg.scheduler, optimizer, steps_per_epoch * tcfg.epochs)
    planned = planned_evaluations(steps_per_epoch, tcfg.epochs, tcfg.eval_every, at)
    policies = [selection.make(name, accelerator.unwrap_model(model), tcfg, planned)
                for name in selection.policies(tcfg)]
    run = FoldTraining(model, optimizer, scheduler, accelerator, val_loader,
                       None if val_target is None else np.asarray(val_target, dtype=float), cfg, fold, log,
                       snapshot_dir, extra_state or {}, policies, holdout_loader)
    start = time.perf_counter()
    if saved is None and snapshot_dir is not None:
        saved = snapshot.load(snapshot_dir)
    if saved is not None:
        run.restore(saved)
    state, skip = run.state, run.state.batch  # skip: the resumed epoch's batches trained before the snapshot
    snapshot_every = tcfg.get("snapshot_every") if snapshot_dir is not None else None
    model.train()
    with tqdm(total=steps_per_epoch * tcfg.epochs, initial=state.step, desc=label or f"fold {fold}", dynamic_ncols=True,
              disable=not accelerator.is_local_main_process) as bar:
        for epoch in range(state.epoch, tcfg.epochs):
            if state.stop:
                break
            batches, epoch_start = run.epoch_batches(train_loader, generator, epoch, skip, saved)
            state.epoch, state.batch, skip = epoch, skip, 0
            for group in micro_batch_groups(batches, tcfg.grad_accum):
                losses = optimizer_step(model, regularizer, group, optimizer, accelerator, task,
                                        tcfg.max_grad_norm, penalty)
                state.step += 1
                state.batch += len(group)
                if not math.isfinite(losses["loss"]):
                    raise Diverged(fold, state.step, "loss", losses["loss"], tcfg.precision)
                state.running.append(losses)
                scheduler.step()
                for policy in policies:
                    policy.stepped(run.unwrapped)
                bar.update(1)
                epoch_end = state.batch >= len(train_loader)
                due = (state.step % tcfg.eval_every == 0 if at is None
                       else state.step - epoch * steps_per_epoch in at)
                if val_loader is not None and (epoch_end or due):
                    state.stop = run.evaluate(bar, epoch_end)
                state.stop = state.stop or (max_steps is not None and state.step >= max_steps)
                if snapshot_dir is not None and (epoch_end or state.stop
                                                 or (snapshot_every and state.step % snapshot_every == 0)):
                    run.save_snapshot(epoch_start)
                if state.stop:
                    break
    run.choose()
    run.result.steps, run.result.train_time = state.step, time.perf_counter() - start
    run.result.planned_steps = steps_per_epoch * tcfg.epochs
    accelerator.free_memory()
    return run.result
