"""One fold: its model, loaders and tracker run, trained and written to fold_<k>/ (result.json last)."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_model

from .. import metrics
from ..data import fingerprint
from ..data.folds import HOLDOUT
from ..data.loading import EncodedRows, make_loader
from ..model import classical, lora
from ..model.regressor import build_model
from ..rundir import RunDir
from ..track.base import WANDB_TARGET, make, target, tracked
from ..train import hardware, selection, snapshot
from ..train.loop import predict, train_fold
from ..train.memory import memory_mb, release_freed_memory, reset_peak_memory
from ..train.seeds import stream_seed
from .prepare import Prepared

log = logging.getLogger(__name__)


def build_fold_model(cfg: DictConfig, fold: int, rank: int = 0):
    """The task, model and regularizer of fold ``fold``, seeded so that every DDP rank starts from the same weights
    (and Mixout from the same pretrained targets), then each rank draws its own dropout masks; rank 0 keeps the
    single-process random stream, so one process reproduces a run whatever launched it."""
    set_seed(stream_seed(cfg.seed, fold))
    task = instantiate(cfg.task)
    model = build_model(cfg.model, n_outputs=task.n_outputs)
    task.setup(model)
    regularizer = instantiate(cfg.regularizer)
    regularizer.setup(model)
    lora.adapt(model, cfg.model)  # after the regularizer: its dropout settings are the backbone's, not the adapters'
    if rank:
        set_seed(stream_seed(cfg.seed, fold, rank))
    return task, model, regularizer


def tracked_config(cfg: DictConfig) -> dict:
    """What a tracker run records as its config: the resolved config and the hardware it ran on."""
    return OmegaConf.to_container(cfg, resolve=True) | {"hardware": hardware.record(cfg.trainer.precision)}


def saved_run_id(cfg: DictConfig, state: dict) -> str | None:
    """The tracker run a snapshot recorded, if this start tracks with the same tracker (a snapshot from before
    trackers were chosen by config recorded a W&B id)."""
    if state.get("tracker", WANDB_TARGET) != target(cfg.logger):
        return None
    return state.get("tracker_id", state.get("wandb_id"))


def fit_classical(cfg: DictConfig, run_dir: Path, fold: int, data: Prepared, group: str) -> dict:
    """Fit a scikit-learn member on fold ``fold``'s training rows and write ``fold_<k>/`` as a transformer fold
    would (``model.joblib`` instead of ``model.safetensors``; no steps, no snapshot)."""
    fdir, targets, texts = RunDir(run_dir).fold(fold), data.targets, data.train["text"].to_numpy()
    tr, va = np.flatnonzero((data.folds != fold) & (data.folds != HOLDOUT)), np.flatnonzero(data.folds == fold)
    held = np.flatnonzero(data.folds == HOLDOUT)
    reset_peak_memory()
    with tracked(make(cfg.logger), run_dir=run_dir, group=group, name=f"{group}-fold{fold}", job_type=f"fold{fold}",
                 config=tracked_config(cfg)) as tracker_run:
        began = time.perf_counter()
        estimator = instantiate(cfg.model.estimator).fit(texts[tr], targets[tr])
        fit_time = time.perf_counter() - began
        val_pred = estimator.predict(texts[va])
        mse = metrics.mse(targets[va], val_pred)
        result = {"mse": mse, "rmse": math.sqrt(mse), "best_step": 0, "steps": 0, "planned_steps": 0,
                  "train_time_s": round(fit_time, 2), "eval_time_s": 0.0, "select": "last", **memory_mb()}
        if len(held):
            held_pred = estimator.predict(texts[held])
            result["holdout_rmse"] = metrics.rmse(targets[held], held_pred)
        tracker_run.update_summary({"best/val_mse": mse, "best/val_rmse": result["rmse"]})
        tables = {"oof": pd.DataFrame({"id": data.train["id"].iloc[va], "pred": val_pred})}
        if len(held):
            tables["holdout_pred"] = pd.DataFrame({"id": data.train["id"].iloc[held], "pred": held_pred})
        if data.test is not None:
            tables["test_pred"] = pd.DataFrame({"id": data.test["id"],
                                                "pred": estimator.predict(data.test["text"].to_numpy())})
        fdir.write(result | {"made_from": fingerprint.made_from(run_dir)}, tables=tables, model_file=fdir.JOBLIB,
                   model_writer=(lambda path: joblib.dump(estimator, path)) if cfg.trainer.save_models else None)
    log.info(fold_line(fold, result, cfg))
    return result


def fit_fold(cfg: DictConfig, run_dir: Path, fold: int, data: Prepared, accelerator, group: str,
             label: str | None = None) -> dict:
    """Train fold ``fold`` and write ``fold_<k>/``: model, OOF and test predictions, then ``result.json``.
    ``label``: the progress bar's (``fold <k> (<i>/<n>)``)."""
    if classical.is_classical(cfg.model):
        return fit_classical(cfg, run_dir, fold, data, group)
    fdir, targets, workers = RunDir(run_dir).fold(fold), data.targets, cfg.trainer.num_workers
    tr, va = np.flatnonzero((data.folds != fold) & (data.folds != HOLDOUT)), np.flatnonzero(data.folds == fold)
    held = np.flatnonzero(data.folds == HOLDOUT)
    release_freed_memory()  # the previous fold's memory, so that this fold's peak is its own
    reset_peak_memory()
    saved = snapshot.load(fdir.path)  # a fold continuing from its snapshot continues its tracker run too
    run_id = saved_run_id(cfg, saved.state) if saved is not None else None
    with tracked(make(cfg.logger), run_dir=run_dir, group=group, name=f"{group}-fold{fold}", job_type=f"fold{fold}",
                 config=tracked_config(cfg), run_id=run_id) as tracker_run:
        if saved is not None:  # the evaluations before the snapshot, which the killed process's tracker may have lost
            tracker_run.replay([(h["step"], {"val/mse": h["val_mse"], "val/rmse": math.sqrt(h["val_mse"])})
                                for h in saved.state["history"]])
        task, model, regularizer = build_fold_model(cfg, fold, accelerator.process_index)
        train_rows = EncodedRows(data.enc, tr, targets, {c: data.train[c].to_numpy() for c in task.columns})
        if data.distill is not None:  # soft targets and pseudo-labels, from the teacher's fold-k model only
            record = fdir.soft_targets if accelerator.is_main_process else None
            train_rows = data.distill.fold_rows(fold, train_rows, record)
        train_loader = make_loader(train_rows, data.tokenizer, cfg.trainer.batch_size, True,
                                   stream_seed(cfg.seed, fold), workers)
        val_loader = make_loader(EncodedRows(data.enc, va, targets), data.tokenizer, cfg.trainer.eval_batch_size,
                                 False, num_workers=workers)
        holdout_loader = make_loader(EncodedRows(data.enc, held, targets), data.tokenizer,
                                     cfg.trainer.eval_batch_size, False, num_workers=workers) if len(held) else None

        def log_eval(metrics: dict, step: int) -> None:
            tracker_run.log(metrics, step=step)
            log.debug("fold %d step %d: %s", fold, step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        res = train_fold(model, regularizer, train_loader, val_loader, targets[va], cfg, accelerator,
                         log=log_eval, fold=fold, task=task, snapshot_dir=fdir.path,
                         extra_state={"tracker": target(cfg.logger), "tracker_id": tracker_run.id}, saved=saved,
                         holdout_loader=holdout_loader, label=label)
        if res.resumed_from is not None:
            log.info("fold %d: continued from its snapshot at step %d", fold, res.resumed_from)
            tracker_run.update_summary({"resumed_from_step": res.resumed_from})
        model.load_state_dict(res.best_state)
        model = lora.merged(model)  # the weights the fold writes: its test predictions are theirs
        result = {"mse": res.best_mse, "rmse": res.best_rmse, "best_step": res.best_step, "steps": res.steps,
                  "planned_steps": res.planned_steps,
                  "train_time_s": round(res.train_time, 2), "eval_time_s": round(res.eval_time, 2),
                  "keep_best_time_s": round(res.keep_time, 2), "snapshot_time_s": round(res.snapshot_time, 2),
                  "threads": torch.get_num_threads(), **memory_mb()}
        if len(held):
            for name, pred in res.holdout_pred.items():
                res.selection[name]["holdout_mse"] = metrics.mse(targets[held], pred)
            result["holdout_mse"] = res.selection[cfg.trainer.select]["holdout_mse"]
            result["holdout_rmse"] = math.sqrt(result["holdout_mse"])
        result["select"] = cfg.trainer.select
        if len(res.selection) > 1 or len(held):
            result["selection"] = res.selection
        tracker_run.update_summary({"best/val_mse": res.best_mse, "best/val_rmse": res.best_rmse,
                                    "best/step": res.best_step}
                                   | ({"best/holdout_rmse": result["holdout_rmse"]} if len(held) else {}))
        if data.test is not None:
            rows = EncodedRows(data.test_enc, np.arange(len(data.test)))
            loader = accelerator.prepare(make_loader(rows, data.tokenizer, cfg.trainer.eval_batch_size, False,
                                                     num_workers=workers))
            test_pred = predict(model, loader, accelerator)
            accelerator.free_memory()
        if accelerator.is_main_process:
            others = {f"pred_{k}": v for k, v in res.val_preds.items() if k != cfg.trainer.select}
            tables = {"oof": pd.DataFrame({"id": data.train["id"].iloc[va], "pred": res.val_pred} | others)}
            if len(held):  # the fold's own policy as "pred", every scored policy as "pred_<policy>"
                tables["holdout_pred"] = pd.DataFrame({"id": data.train["id"].iloc[held],
                                                       "pred": res.holdout_pred[cfg.trainer.select]}
                                                      | {f"pred_{k}": v for k, v in res.holdout_pred.items()
                                                         if k != cfg.trainer.select})
            if data.test is not None:
                tables["test_pred"] = pd.DataFrame({"id": data.test["id"], "pred": test_pred})
            fdir.write(result | {"made_from": fingerprint.made_from(run_dir)}, tables=tables,
                       model_writer=(lambda path: save_model(model, str(path))) if cfg.trainer.save_models else None)
            if not cfg.trainer.keep_snapshot:
                snapshot.remove(fdir.path)
    log.info(fold_line(fold, result, cfg))
    return result


def fold_line(fold: int, result: dict, cfg) -> str:
    """A finished fold's line in the console and run.log: its score, which weights, when, how long."""
    stopped = "" if result["steps"] >= result["planned_steps"] else (
        f" (stopped early: {cfg.trainer.patience} evaluation{'s' * (cfg.trainer.patience != 1)} without a better "
        f"one; {result['planned_steps']} planned)")
    held_out = f", holdout RMSE {result['holdout_rmse']:.4f}" if "holdout_rmse" in result else ""
    if not result["steps"]:  # a scikit-learn member: fitted, not trained in steps
        return (f"fold {fold}: val RMSE {result['rmse']:.4f} (MSE {result['mse']:.4f}{held_out}), fitted in "
                f"{result['train_time_s']:.1f} s (peak RSS {result['peak_rss_mb']:.0f} MiB)")
    return (f"fold {fold}: val RMSE {result['rmse']:.4f} (MSE {result['mse']:.4f}{held_out}) "
            f"{selection.chosen(result.get('select', 'best'))} {result['best_step']} of {result['steps']}{stopped}, "
            f"{result['train_time_s']:.0f} s (evaluation "
            f"{100 * result['eval_time_s'] / max(result['train_time_s'], 1e-9):.0f}%, peak RSS "
            f"{result['peak_rss_mb']:.0f} MiB)")
