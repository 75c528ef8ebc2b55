"""The K-fold cross-validation runner: folds, per-fold training, OOF predictions, bagging, run folder."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
from accelerate.utils import set_seed
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_model

from . import tracking
from .data import DataError, load_table, make_synthetic
from .files import atomic_path, read_json, write_csv, write_json
from .folds import make_folds
from .model import build_model, load_tokenizer
from .trainer import EncodedRows, make_accelerator, make_loader, predict, train_fold


def load_data(data_cfg, n_splits: int) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Validated train table and the test table (None when there is none); generates the synthetic set on first use."""
    path = Path(data_cfg.path)
    if data_cfg.get("generate") and not path.exists():
        make_synthetic(path.parent, **data_cfg.generate)
    cols = dict(id_col=data_cfg.id_col, text_col=data_cfg.text_col)
    train = load_table(path, target_col=data_cfg.target_col, min_rows=n_splits, **cols)
    test_path = Path(data_cfg.test_path) if data_cfg.get("test_path") else path.with_name("test.csv")
    if not test_path.exists():
        if data_cfg.get("test_path"):
            raise DataError(f"{test_path}: test file not found (data.test_path)")
        return train, None
    return train, load_table(test_path, require_target=False, **cols)


def tokenize(tokenizer, texts, max_length: int) -> dict:
    """Tokenized once per CV run (not per fold), unpadded: batches are padded to their own longest row."""
    return dict(tokenizer(list(texts), truncation=True, max_length=max_length))


def fold_dir(run_dir: Path, fold: int) -> Path:
    return run_dir / f"fold_{fold}"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        out |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value}
    return out


def check_run_config(cfg: DictConfig, run_dir: Path, save: bool = True) -> None:
    """Save the config a run folder was started with; refuse to continue that folder with a different one.

    Finished folds are kept on resume, so a changed config would mix two experiments in one OOF file. Hydra
    rewrites ``.hydra/config.yaml`` on every start (before we can check), hence our own ``run_config.yaml``
    (unresolved: machine-independent), which a refused start also puts back for ``predict``. ``resume`` and
    ``logger`` may differ.
    """
    path = run_dir / "run_config.yaml"
    if not path.exists():
        if save:
            with atomic_path(path) as tmp:
                tmp.write_text(OmegaConf.to_yaml(cfg))
        return
    saved, now = (_flat(OmegaConf.to_container(c)) for c in (OmegaConf.load(path), cfg))
    changed = sorted(k for k in saved.keys() | now.keys()
                     if k.split(".")[0] not in ("resume", "logger")
                     and saved.get(k, "<unset>") != now.get(k, "<unset>"))
    if changed:
        if save and (run_dir / ".hydra").is_dir():
            with atomic_path(run_dir / ".hydra" / "config.yaml") as tmp:
                tmp.write_text(path.read_text())
        raise DataError(f"{path}: this run folder was started with another config; resume it with the same "
                        f"overrides (differing: {', '.join(changed)})")


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
            "train_time_s": float(sum(r["train_time_s"] for r in fold_results.values())),
        },
        "folds": {str(k): v for k, v in fold_results.items()},
    }


def bag(test_preds: np.ndarray, how: str) -> np.ndarray:
    """Combine the fold models' predictions (folds x rows) into one."""
    if how not in ("mean", "median"):
        raise ValueError(f"cv.bagging must be mean or median, got {how!r}")
    return np.mean(test_preds, 0) if how == "mean" else np.median(test_preds, 0)


def run(cfg: DictConfig, run_dir: Path, job: dict | None = None) -> dict:
    """Run (or resume) a full CV experiment into ``run_dir``; returns the metrics dict."""
    job, started = job or {}, time.perf_counter()
    train, test = load_data(cfg.data, cfg.cv.n_splits)  # bad input fails here, before anything is written
    accelerator = make_accelerator(cfg.trainer)
    main = accelerator.is_main_process

    folds = make_folds(train["target"], cfg.cv.n_splits, cfg.cv.seed, cfg.cv.bins)
    check_run_config(cfg, run_dir, save=main)  # every process, so none waits for a main process that refused
    if main:
        for stale in [*run_dir.glob(".*.tmp"), *run_dir.glob("fold_*/.*.tmp")]:  # left by a killed run
            stale.unlink()
        write_csv(pd.DataFrame({"id": train["id"], "fold": folds, "target": train["target"]}), run_dir / "folds.csv")
    tokenizer = load_tokenizer(cfg.model)
    enc = tokenize(tokenizer, train["text"], cfg.model.max_length)
    test_enc = tokenize(tokenizer, test["text"], cfg.model.max_length) if test is not None else None
    targets = train["target"].to_numpy()

    group = tracking.group_name(cfg, job)
    results, test_preds = {}, {}
    run_folds = list(cfg.cv.folds) if cfg.cv.folds is not None else list(range(cfg.cv.n_splits))
    for fold in run_folds:
        fdir = fold_dir(run_dir, fold)
        if (fdir / "result.json").exists():  # finished before an interruption: keep it
            results[fold] = read_json(fdir / "result.json")
            continue
        set_seed(cfg.seed + fold)
        tr, va = np.flatnonzero(folds != fold), np.flatnonzero(folds == fold)
        with tracking.wandb_run(cfg, run_dir=run_dir, group=group, name=f"{group}-fold{fold}", job_type=f"fold{fold}") as wb:
            model = build_model(cfg.model)
            regularizer = instantiate(cfg.regularizer)
            regularizer.setup(model)
            train_loader = make_loader(EncodedRows(enc, tr, targets), tokenizer, cfg.trainer.batch_size, True, cfg.seed + fold)
            val_loader = make_loader(EncodedRows(enc, va, targets), tokenizer, cfg.trainer.eval_batch_size, False)
            res = train_fold(
                model, regularizer, train_loader, val_loader, targets[va], cfg, accelerator,
                log=lambda metrics, step: wb.log(metrics, step=step), desc=f"fold {fold}",
            )
            model.load_state_dict(res.best_state)
            fold_result = {
                "mse": res.best_mse, "rmse": res.best_rmse, "best_step": res.best_step,
                "steps": res.steps, "train_time_s": round(res.train_time, 2),
            }
            wb.summary.update({"best/val_mse": res.best_mse, "best/val_rmse": res.best_rmse, "best/step": res.best_step})
            if test is not None:
                loader = accelerator.prepare(make_loader(EncodedRows(test_enc, np.arange(len(test))), tokenizer, cfg.trainer.eval_batch_size, False))
                test_pred = predict(model, loader, accelerator)
                accelerator.free_memory()
            if main:
                if cfg.trainer.save_models:
                    with atomic_path(fdir / "model.safetensors") as tmp:
                        save_model(model, str(tmp))
                write_csv(pd.DataFrame({"id": train["id"].iloc[va], "pred": res.val_pred}), fdir / "oof.csv")
                if test is not None:
                    write_csv(pd.DataFrame({"id": test["id"], "pred": test_pred}), fdir / "test_pred.csv")
                write_json(fold_result, fdir / "result.json")  # last: marks the fold finished
            results[fold] = fold_result
        del model, res

    accelerator.wait_for_everyone()
    if not main:
        return {}
    oof = train[["id"]].assign(fold=folds, target=targets, pred=np.nan)
    for fold in run_folds:
        fold_oof = pd.read_csv(fold_dir(run_dir, fold) / "oof.csv", dtype={"id": str})
        oof.loc[folds == fold, "pred"] = fold_oof["pred"].to_numpy()
    oof = oof[oof["fold"].isin(run_folds)].reset_index(drop=True)
    # The floor every model must clear: each fold's rows predicted by the mean of its training rows.
    mean_pred = np.array([targets[(folds != f)].mean() for f in oof["fold"]])
    mean_rmse = float(np.sqrt(np.mean((mean_pred - oof["target"]) ** 2)))
    metrics = cv_metrics(oof, results, mean_rmse)
    metrics["cv"] |= {"wall_time_s": round(time.perf_counter() - started, 1), "processes": accelerator.num_processes}
    write_csv(oof, run_dir / "oof.csv")
    if test is not None:
        preds = np.stack([pd.read_csv(fold_dir(run_dir, f) / "test_pred.csv")["pred"].to_numpy() for f in run_folds])
        write_csv(pd.DataFrame({"id": test["id"], "target": bag(preds, cfg.cv.bagging)}), run_dir / "submission.csv")
    write_json(metrics, run_dir / "metrics.json")

    with tracking.wandb_run(cfg, run_dir=run_dir, group=group, name=f"{group}-cv", job_type="cv") as wb:
        wb.summary.update({"cv/mse": metrics["cv"]["mse"], "cv/rmse": metrics["cv"]["rmse"],
                           "cv/fold_rmse_sd": metrics["cv"]["fold_rmse_sd"]})
        if cfg.logger.mode != "disabled":
            import wandb

            wb.log({"oof": wandb.Table(dataframe=oof)})
    return metrics
