"""The K-fold cross-validation runner: the run folder is prepared, filled fold by fold, then collected.

- ``prepare`` checks the data, writes ``folds.csv``, ``fingerprint.json`` and ``run_config.yaml`` (and refuses a
  resumed folder whose train file or config changed);
- ``fit_fold`` trains fold k and writes ``fold_k/`` (``result.json`` last: the fold is finished);
- ``collect`` builds ``oof.csv``, ``submission.csv`` and ``metrics.json`` from the ``fold_*`` folders, checking every
  id against ``folds.csv`` and the test file and each fold's ``made_from`` against the run's, so rows can never be
  misaligned nor folds of another run mixed in.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from accelerate.utils import set_seed
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_model

from . import distill, fingerprint, hardware, lock, snapshot
from .data import DataError, load_data
from .files import atomic_path, write_csv, write_json
from .fingerprint import FREE_KEYS
from .folds import HOLDOUT, assign
from .holdout import summarize as selection_scores
from .model import build_model, load_tokenizer, tokenize
from .predict import bag
from .runfiles import check_ids, read_preds, read_result, read_run_config
from .tasks import check_columns
from .track.base import WANDB_TARGET, group_name, make, target, tracked
from .trainer import EncodedRows, make_accelerator, make_loader, predict, release_freed_memory, train_fold

log = logging.getLogger(__name__)


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold_{fold}"


def check_run_config(cfg: DictConfig, run_dir: Path, save: bool = True) -> None:
    """Save the config a run folder was started with; refuse to continue that folder with a different one.

    Finished folds are kept on resume, so a changed config would mix two experiments in one OOF file. Hydra
    rewrites ``.hydra/config.yaml`` on every start (before we can check), hence our own ``run_config.yaml``
    (unresolved: machine-independent), which a refused start also puts back for ``predict``. ``resume`` and
    ``logger`` may differ, and so may which folds a start trains (``cv.folds``: parallel fold jobs each train one)
    and how (``launcher``, ``output``, ``collect``); but a start that collects may not cover fewer folds than a
    collected run has finished: it would cut its oof.csv and its bag to those folds.
    """
    path = run_dir / "run_config.yaml"
    if not path.exists():
        if save:
            with atomic_path(path) as tmp:
                tmp.write_text(OmegaConf.to_yaml(_as_saved(cfg)))
        return
    saved, now = (fingerprint.flat(OmegaConf.to_container(c)) for c in (read_run_config(run_dir), _as_saved(cfg)))
    if str(saved.get("name", "")).startswith("${") or str(now.get("name", "")).startswith("${"):
        saved["name"] = now["name"]  # saved before names were resolved, or no Hydra to resolve: compare the rest
    changed = sorted(k for k in fingerprint.binding(saved).keys() | fingerprint.binding(now).keys() | {"name"}
                     if saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        _refuse_start(run_dir, save, f"{path}: this run folder was started with another config; resume it with the "
                                     f"same overrides (differing: {', '.join(changed)})")
    done = [k for k in range(cfg.cv.n_splits) if (fold_dir(run_dir, k) / "result.json").exists()]
    if cfg.get("collect", True) and (run_dir / "metrics.json").exists() and set(done) - set(expected_folds(cfg)):
        _refuse_start(run_dir, save, f"{run_dir / 'metrics.json'}: the results cover folds {done}; "
                                     f"cv.folds={list(cfg.cv.folds)} would cut them to fewer; resume with cv.folds "
                                     f"covering {done} (or null), or start a new run")


def _as_saved(cfg: DictConfig) -> DictConfig:
    """What ``run_config.yaml`` keeps: the config unresolved (paths of this machine's packages stay resolvers), but
    the run's name resolved and Hydra's group choices beside it, so that a resume from the folder alone is the same
    run (the name follows the choices of the start that made it, not of the one that resumes it)."""
    saved = OmegaConf.create(OmegaConf.to_container(cfg))
    name = OmegaConf.select(cfg, "name", throw_on_resolution_failure=False)  # None outside Hydra (compose API)
    if name is not None:
        saved.name = str(name)
    if "choices" not in saved:
        saved.choices = _hydra_choices()
    return saved


def _hydra_choices() -> dict:
    try:
        return {k: v for k, v in HydraConfig.get().runtime.choices.items() if not k.startswith("hydra/")}
    except ValueError:  # not under Hydra
        return {}


def adopt_run_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """``resume=<folder>`` continues the run with the config in its ``run_config.yaml``: nothing needs typing again.

    An override given beside it must agree with that config (the start is refused naming the keys that differ);
    the keys that may differ between starts (``FREE_KEYS``, ``cv.folds``) come from this start. An ``experiment=``
    preset is compared key by key like any start (``check_run_config``).
    """
    path = Path(cfg.resume) / "run_config.yaml"
    if not path.is_file():
        return cfg  # refused by the schema with one line
    saved = read_run_config(path.parent)
    keys = [o.split("=", 1)[0].lstrip("+~") for o in overrides]
    if any(k.split("/")[0] == "experiment" for k in keys):
        return cfg
    given = [k for k in keys if k.split(".")[0].split("/")[0] not in (*FREE_KEYS, "hydra") and k != "cv.folds"]
    differing = [k for k in given if _value(cfg, k) != _value(saved, k)]
    if differing:
        _refuse_start(Path(cfg.resume), True, f"{path}: this run was started with other values of "
                                              f"{', '.join(differing)}; resume it with RESUME={cfg.resume} alone, "
                                              f"or start a new run")
    own = {k: cfg.get(k) for k in FREE_KEYS} | ({"cv": {"folds": cfg.cv.folds}} if "cv.folds" in keys else {})
    adopted = OmegaConf.merge(saved, OmegaConf.create(own))
    adopted.logger = cfg.logger  # replaced, not merged: another tracker's keys would not fit this one
    OmegaConf.set_struct(adopted, True)
    return adopted


def _value(cfg, key: str):
    value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _refuse_start(run_dir: Path, save: bool, message: str) -> None:
    """Hydra has already written the refused start's config: put the run's own back (``predict`` reads it)."""
    if save and (run_dir / ".hydra").is_dir():
        with atomic_path(run_dir / ".hydra" / "config.yaml") as tmp:
            tmp.write_text((run_dir / "run_config.yaml").read_text())
    raise DataError(message)




def describe(cfg: DictConfig, run_dir: Path) -> str:
    """The one-line summary a run starts with (the full config is in ``.hydra/config.yaml``)."""
    choices = cfg.get("choices") or _hydra_choices()  # a resumed run's are those of its first start
    n = cfg.cv.n_splits
    folds = f"folds {list(cfg.cv.folds)} of {n}" if cfg.cv.folds is not None else f"{n} folds"
    return (f"{cfg.name}: {'resuming' if cfg.get('resume') else 'run'} folder {run_dir} | data {cfg.data.path} | "
            f"model {choices.get('model', cfg.model.backbone)} (max_length {cfg.model.max_length}, "
            f"{cfg.model.pooling} pooling) | regularizer {choices.get('regularizer', '?')} | "
            f"task {choices.get('task', '?')}{distill.describe(cfg)} | "
            f"optimizer {choices.get('optimizer', '?')} lr {cfg.optimizer.lr:g} | {folds} x {cfg.trainer.epochs} "
            f"epoch(s), batch {cfg.trainer.batch_size}, {cfg.trainer.precision}")


@dataclass
class Prepared:
    """What every fold of a run shares: the tables, the fold of each row, the tokenized texts."""

    train: pd.DataFrame
    test: pd.DataFrame | None
    folds: np.ndarray
    tokenizer: object
    enc: dict
    test_enc: dict | None
    distill: distill.Distiller | None = None  # distill.teacher's fold models: soft targets, pseudo-labels

    @property
    def targets(self) -> np.ndarray:
        return self.train["target"].to_numpy()


def prepare(cfg: DictConfig, run_dir: Path, main: bool = True, texts: bool = True) -> Prepared:
    """Check the data, write ``folds.csv`` and ``run_config.yaml``; on resume, refuse changed data or config.

    ``texts=False`` skips tokenizing (a process that trains no fold: the launcher of parallel fold jobs, ``collect``).
    """
    train, test = load_data(cfg.data, cfg.cv.n_splits)  # bad input fails here, before anything is written
    check_columns(cfg, train)  # the label columns the task reads (standard_error)
    if test is None and main:
        log.info("no test file beside %s (data.test_path): no submission.csv", cfg.data.path)
    folds = assign(train["id"], train["target"], cfg.cv)  # HOLDOUT (-1) for the rows of cv.holdout
    table = pd.DataFrame({"id": train["id"], "fold": folds, "target": train["target"]})
    data_print = fingerprint.of_data(cfg.data.path, train)
    try:
        notes = fingerprint.check_data(run_dir, data_print, table)  # a changed train file is refused here
    except DataError as err:
        _refuse_start(run_dir, main, str(err))
    for note in notes:
        log.warning("warning: %s", note)
    distiller = distill.load(cfg, table, train, data_print)  # a teacher with other data or folds is refused here
    check_run_config(cfg, run_dir, save=main)  # every process, so none waits for a main process that refused
    if (run_dir / "folds.csv").exists():  # the same config on the same data: only another library's split differs
        kept = pd.read_csv(run_dir / "folds.csv", dtype={"id": str})
        check_ids(run_dir / "folds.csv", kept["id"], table["id"], f"the train file {cfg.data.path}")
        if not np.array_equal(kept["fold"].to_numpy(), folds):
            raise DataError(f"{run_dir / 'folds.csv'}: the folds differ from this config's; start a new run")
    if main:
        # left by a killed run; not those of a fold job writing beside this one (a launcher's other jobs)
        for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("fold_*/.*.tmp")]:
            if lock.is_free(stale.parent):
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)
        if not cfg.trainer.keep_snapshot:  # a kill between a fold's result.json and its snapshot's removal
            for finished in run_dir.glob("fold_*/result.json"):
                snapshot.remove(finished.parent)
        write_csv(table, run_dir / "folds.csv")
        if not (run_dir / fingerprint.NAME).exists():  # the first start's: later starts are compared with it
            write_json(data_print, run_dir / fingerprint.NAME)
    if not texts:
        return Prepared(train, test, folds, None, None, None, distiller)
    tokenizer = load_tokenizer(cfg.model)
    enc = tokenize(tokenizer, train["text"], cfg.model.max_length)
    test_enc = tokenize(tokenizer, test["text"], cfg.model.max_length) if test is not None else None
    return Prepared(train, test, folds, tokenizer, enc, test_enc, distiller)


def reset_peak_memory() -> None:
    """Start a new resident-memory high-water mark (Linux ``VmHWM``), so that each fold reports its own peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def memory_mb() -> dict:
    """This process's resident memory now and its peak since ``reset_peak_memory`` (MiB): a fold that leaks makes
    the next one's grow.

    The peak is read from Linux's ``/proc/self/status`` (``VmHWM``): psutil has no high-water mark, let alone a
    resettable one. Elsewhere it is the peak since the process started.
    """
    import resource
    import sys

    import psutil

    now = psutil.Process().memory_info().rss / 2**20  # before the peak, which then holds it
    try:
        status = Path("/proc/self/status").read_text()
        peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 1024)
    return {"rss_mb": round(now, 1), "peak_rss_mb": round(peak, 1)}


def build_fold_model(cfg: DictConfig, fold: int, rank: int = 0):
    """The task, model and regularizer of fold ``fold``, seeded so that every DDP rank starts from the same weights
    (and Mixout from the same pretrained targets), then each rank draws its own dropout masks; rank 0 keeps the
    single-process random stream, so one process reproduces a run whatever launched it."""
    set_seed(cfg.seed + fold)
    task = instantiate(cfg.task)
    model = build_model(cfg.model, n_outputs=task.n_outputs)
    task.setup(model)
    regularizer = instantiate(cfg.regularizer)
    regularizer.setup(model)
    if rank:
        set_seed(cfg.seed + fold + 7919 * rank)
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


def fit_fold(cfg: DictConfig, run_dir: Path, fold: int, data: Prepared, accelerator, group: str) -> dict:
    """Train fold ``fold`` and write ``fold_<k>/``: model, OOF and test predictions, then ``result.json``."""
    fdir, targets, workers = fold_dir(run_dir, fold), data.targets, cfg.trainer.num_workers
    tr, va = np.flatnonzero((data.folds != fold) & (data.folds != HOLDOUT)), np.flatnonzero(data.folds == fold)
    held = np.flatnonzero(data.folds == HOLDOUT)
    release_freed_memory()  # the previous fold's memory, so that this fold's peak is its own
    reset_peak_memory()
    saved = snapshot.load(fdir)  # a fold continuing from its snapshot continues its tracker run too
    run_id = saved_run_id(cfg, saved.state) if saved is not None else None
    with tracked(make(cfg.logger), run_dir=run_dir, group=group, name=f"{group}-fold{fold}", job_type=f"fold{fold}",
                 config=tracked_config(cfg), run_id=run_id) as tracker_run:
        task, model, regularizer = build_fold_model(cfg, fold, accelerator.process_index)
        train_rows = EncodedRows(data.enc, tr, targets, {c: data.train[c].to_numpy() for c in task.columns})
        if data.distill is not None:  # soft targets and pseudo-labels, from the teacher's fold-k model only
            record = fdir / "soft_targets.csv" if accelerator.is_main_process else None
            train_rows = data.distill.fold_rows(fold, train_rows, record)
        train_loader = make_loader(train_rows, data.tokenizer, cfg.trainer.batch_size, True, cfg.seed + fold, workers)
        val_loader = make_loader(EncodedRows(data.enc, va, targets), data.tokenizer, cfg.trainer.eval_batch_size,
                                 False, num_workers=workers)
        holdout_loader = make_loader(EncodedRows(data.enc, held, targets), data.tokenizer,
                                     cfg.trainer.eval_batch_size, False, num_workers=workers) if len(held) else None

        def log_eval(metrics: dict, step: int) -> None:
            tracker_run.log(metrics, step=step)
            log.debug("fold %d step %d: %s", fold, step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

        res = train_fold(model, regularizer, train_loader, val_loader, targets[va], cfg, accelerator,
                         log=log_eval, fold=fold, task=task, snapshot_dir=fdir,
                         extra_state={"tracker": target(cfg.logger), "tracker_id": tracker_run.id}, saved=saved,
                         holdout_loader=holdout_loader)
        if res.resumed_from is not None:
            log.info("fold %d: continued from its snapshot at step %d", fold, res.resumed_from)
            tracker_run.update_summary({"resumed_from_step": res.resumed_from})
        model.load_state_dict(res.best_state)
        result = {"mse": res.best_mse, "rmse": res.best_rmse, "best_step": res.best_step, "steps": res.steps,
                  "planned_steps": res.planned_steps,
                  "train_time_s": round(res.train_time, 2), "eval_time_s": round(res.eval_time, 2),
                  "keep_best_time_s": round(res.keep_time, 2), "snapshot_time_s": round(res.snapshot_time, 2),
                  "threads": torch.get_num_threads(), **memory_mb()}
        if len(held):
            for name, pred in res.holdout_pred.items():
                res.selection[name]["holdout_mse"] = float(np.mean((pred - targets[held]) ** 2))
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
            if cfg.trainer.save_models:
                with atomic_path(fdir / "model.safetensors") as tmp:
                    save_model(model, str(tmp))
            others = {f"pred_{k}": v for k, v in res.val_preds.items() if k != cfg.trainer.select}
            write_csv(pd.DataFrame({"id": data.train["id"].iloc[va], "pred": res.val_pred} | others), fdir / "oof.csv")
            if len(held):  # the fold's own policy as "pred", every scored policy as "pred_<policy>"
                write_csv(pd.DataFrame({"id": data.train["id"].iloc[held],
                                        "pred": res.holdout_pred[cfg.trainer.select]}
                                       | {f"pred_{k}": v for k, v in res.holdout_pred.items()
                                          if k != cfg.trainer.select}),
                          fdir / "holdout_pred.csv")
            if data.test is not None:
                write_csv(pd.DataFrame({"id": data.test["id"], "pred": test_pred}), fdir / "test_pred.csv")
            write_json(result | {"made_from": fingerprint.made_from(run_dir)}, fdir / "result.json")  # last: done
            if not cfg.trainer.keep_snapshot:
                snapshot.remove(fdir)
    stopped = "" if result["steps"] >= result["planned_steps"] else (
        f" (stopped early: {cfg.trainer.patience} evaluation{'s' * (cfg.trainer.patience != 1)} without a better "
        f"one; {result['planned_steps']} planned)")
    held_out = f", holdout RMSE {result['holdout_rmse']:.4f}" if "holdout_rmse" in result else ""
    log.info("fold %d: val RMSE %.4f (MSE %.4f%s) %s %d of %d%s, %.0f s (evaluation %.0f%%, peak RSS %.0f MiB)",
             fold, result["rmse"], result["mse"], held_out, _chosen(cfg.trainer.select), result["best_step"],
             result["steps"], stopped,
             result["train_time_s"], 100 * result["eval_time_s"] / max(result["train_time_s"], 1e-9),
             result["peak_rss_mb"])
    return result


def _chosen(select: str) -> str:
    return {"best": "best at step", "best_epoch": "best epoch end at step", "last": "last, step",
            "ema": "EMA of the steps to", "swa": "SWA of the evaluations to"}[select]


def cv_metrics(oof: pd.DataFrame, fold_results: dict[int, dict], mean_rmse: float) -> dict:
    mse = float(np.mean((oof["pred"] - oof["target"]) ** 2))
    fold_mse = np.array([r["mse"] for r in fold_results.values()])
    fold_rmse = np.sqrt(fold_mse)
    return {
        "cv": {
            "mse": mse,
            "rmse": math.sqrt(mse),
            "fold_mse_mean": float(fold_mse.mean()),
            "fold_mse_sd": float(fold_mse.std(ddof=1)) if len(fold_mse) > 1 else 0.0,
            "fold_rmse_mean": float(fold_rmse.mean()),
            "fold_rmse_sd": float(fold_rmse.std(ddof=1)) if len(fold_rmse) > 1 else 0.0,
            "mean_predictor_rmse": mean_rmse,
            "n_rows": len(oof),
            # a sum of float seconds carries binary noise in its last digits: 2 decimals are what is measured
            "train_time_s": round(float(sum(r["train_time_s"] for r in fold_results.values())), 2),
            "eval_time_s": round(float(sum(r.get("eval_time_s", 0.0) for r in fold_results.values())), 2),
        },
        "folds": {str(k): v for k, v in fold_results.items()},
    }


def expected_folds(cfg) -> list[int]:
    return list(cfg.cv.folds) if cfg.cv.folds is not None else list(range(cfg.cv.n_splits))


def unfinished(run_dir: Path, folds: list[int]) -> list[int]:
    return [k for k in folds if not (fold_dir(run_dir, k) / "result.json").exists()]


def collect(cfg: DictConfig, run_dir: Path, data: Prepared, run_folds: list[int]) -> dict:
    """``oof.csv``, ``submission.csv`` and ``metrics.json`` from the finished ``fold_*`` folders, ids checked."""
    folds, targets, train = data.folds, data.targets, data.train
    oof = train[["id"]].assign(fold=folds, target=targets, pred=np.nan)
    results = {}
    for fold in run_folds:
        fdir, rows = fold_dir(run_dir, fold), folds == fold
        oof.loc[rows, "pred"] = read_preds(fdir / "oof.csv", train["id"][rows], f"fold {fold}'s rows of folds.csv")
        results[fold] = read_result(fdir / "result.json")
        fingerprint.check_fold(run_dir, fdir, results[fold])  # not a fold copied in from another run
        results[fold].pop("made_from", None)
    oof = oof[oof["fold"].isin(run_folds)].reset_index(drop=True)
    # The floor every model must clear: each fold's rows predicted by the mean of its training rows.
    mean_pred = np.array([targets[(folds != f) & (folds != HOLDOUT)].mean() for f in oof["fold"]])
    mean_rmse = float(np.sqrt(np.mean((mean_pred - oof["target"]) ** 2)))
    metrics = cv_metrics(oof, results, mean_rmse)
    held, holdout = folds == HOLDOUT, None
    if held.any() or any("selection" in r for r in results.values()):
        val_preds = {k: read_preds(fold_dir(run_dir, k) / "oof.csv", train["id"][folds == k],
                                   f"fold {k}'s rows of folds.csv", columns=True) for k in run_folds}
        held_preds = {k: read_preds(fold_dir(run_dir, k) / "holdout_pred.csv", train["id"][held],
                                    "the holdout rows of folds.csv", columns=True) for k in run_folds} \
            if held.any() else None
        metrics["selection"] = selection_scores(val_preds, {k: targets[folds == k] for k in run_folds},
                                                targets[held] if held.any() else None, held_preds,
                                                cfg.trainer.select, cfg.cv.bagging)
        if held.any():
            holdout = train[["id"]][held].assign(target=targets[held], pred=bag(
                np.stack([p["pred"] for p in held_preds.values()]), cfg.cv.bagging))
    submission = None
    if data.test is not None:  # every file read and checked before the first is written
        preds = [read_preds(fold_dir(run_dir, fold) / "test_pred.csv", data.test["id"], "the test file")
                 for fold in run_folds]
        # the user's own column names, as the competition's sample submission has them
        submission = pd.DataFrame({cfg.data.id_col: data.test["id"],
                                   cfg.data.target_col: bag(np.stack(preds), cfg.cv.bagging)})
    write_csv(oof, run_dir / "oof.csv")
    if holdout is not None:
        write_csv(holdout, run_dir / "holdout.csv")
    if submission is not None:
        write_csv(submission, run_dir / "submission.csv")
    return metrics


def finish(cfg: DictConfig, run_dir: Path, data: Prepared, group: str, extra: dict) -> dict:
    """Collect the finished folds into the run's results, ``metrics.json`` and the tracker's ``-cv`` run."""
    metrics = collect(cfg, run_dir, data, expected_folds(cfg))
    metrics["cv"] |= extra
    metrics["hardware"] = hardware.record(cfg.trainer.precision)  # what every time in this file was measured on
    write_json(metrics, run_dir / "metrics.json")
    with tracked(make(cfg.logger), run_dir=run_dir, group=group, name=f"{group}-cv", job_type="cv",
                 config=tracked_config(cfg)) as tracker_run:  # the CV score, the fold spread and the OOF table
        cv = metrics["cv"]
        tracker_run.update_summary({"cv/mse": cv["mse"], "cv/rmse": cv["rmse"], "cv/fold_rmse_sd": cv["fold_rmse_sd"]}
                                   | holdout_summary(metrics.get("selection", {})))
        tracker_run.table("oof", pd.read_csv(run_dir / "oof.csv", dtype={"id": str}))
    return metrics


def holdout_summary(selection: dict) -> dict:
    """The tracker's ``cv/holdout_rmse`` and ``cv/selection_optimism`` (empty without a holdout)."""
    if "rmse" not in selection:
        return {}
    return {"cv/holdout_rmse": selection["rmse"], "cv/selection_optimism": selection["optimism"]["mean"]}


def run(cfg: DictConfig, run_dir: Path, job: dict | None = None) -> dict:
    """Run (or resume) a CV experiment into ``run_dir``: prepare, fit every fold not finished yet, collect.

    Returns the metrics dict; empty off the main process, and in a fold job (``collect=false``), whose launcher
    collects once every fold is done.
    """
    started = time.perf_counter()
    accelerator = make_accelerator(cfg.trainer)
    main = accelerator.is_main_process
    with lock.writing(cfg, run_dir, when=main):  # only rank 0 writes
        data = prepare(cfg, run_dir, main)
        group = group_name(cfg, job or {})
        for fold in expected_folds(cfg):
            if (fold_dir(run_dir, fold) / "result.json").exists():  # finished before an interruption: keep it
                log.info("fold %d: kept from the earlier start", fold)
                continue
            with lock.writing_fold(fold_dir(run_dir, fold), when=main):
                fit_fold(cfg, run_dir, fold, data, accelerator, group)
        accelerator.wait_for_everyone()
        if not main or not cfg.get("collect", True):
            return {}
        return finish(cfg, run_dir, data, group, {"wall_time_s": round(time.perf_counter() - started, 1),
                                                 "processes": accelerator.num_processes})
