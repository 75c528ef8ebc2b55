"""Collecting a run: ``oof.csv``, ``submission.csv``, ``holdout.csv``, ``metrics.json`` and the tracker's ``-cv`` run
from the ``fold_*`` folders, every id checked against ``folds.csv`` and each fold's ``made_from`` against the run's;
``make collect RUN=<run folder>`` does it again for a finished run and names the unfinished folds."""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from .. import metrics
from ..bagging import bag
from ..data import fingerprint
from ..data.folds import HOLDOUT
from ..errors import DataError, OneLineError, refuse
from ..files import write_csv, write_json
from ..rundir import FoldDir, RunDir, expected_folds, read_csv, read_preds, read_run_config, unfinished
from ..track.base import make, tracked
from ..train import hardware
from . import lock
from .fold import tracked_config
from .prepare import Prepared, prepare

log = logging.getLogger(__name__)


def cv_metrics(oof: pd.DataFrame, fold_results: dict[int, dict], mean_rmse: float) -> dict:
    mse = metrics.mse(oof["target"], oof["pred"])
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


def collect(cfg: DictConfig, run_dir: Path, data: Prepared, run_folds: list[int]) -> dict:
    """``oof.csv``, ``submission.csv`` and ``metrics.json`` from the finished ``fold_*`` folders, ids checked."""
    folds, targets, train = data.folds, data.targets, data.train
    oof = train[["id"]].assign(fold=folds, target=targets, pred=np.nan)
    results = {}
    run = RunDir(run_dir)
    for fold in run_folds:
        fdir, rows = run.fold(fold), folds == fold
        oof.loc[rows, "pred"] = read_preds(fdir.oof, train["id"][rows], f"fold {fold}'s rows of {RunDir.FOLDS}")
        results[fold] = fdir.read_result()
        fingerprint.check_fold(run_dir, fdir.path, results[fold])  # not a fold copied in from another run
        results[fold].pop("made_from", None)
    oof = oof[oof["fold"].isin(run_folds)].reset_index(drop=True)
    # The floor every model must clear: each fold's rows predicted by the mean of its training rows.
    mean_pred = np.array([targets[(folds != f) & (folds != HOLDOUT)].mean() for f in oof["fold"]])
    mean_rmse = metrics.rmse(oof["target"], mean_pred)
    scores = cv_metrics(oof, results, mean_rmse)
    held, holdout = folds == HOLDOUT, None
    if held.any() or any("selection" in r for r in results.values()):
        val_preds = {k: read_preds(run.fold(k).oof, train["id"][folds == k],
                                   f"fold {k}'s rows of {RunDir.FOLDS}", columns=True) for k in run_folds}
        held_preds = {k: read_preds(run.fold(k).holdout_pred, train["id"][held],
                                    f"the holdout rows of {RunDir.FOLDS}", columns=True) for k in run_folds} \
            if held.any() else None
        scores["selection"] = metrics.selection_summary(val_preds, {k: targets[folds == k] for k in run_folds},
                                                        targets[held] if held.any() else None, held_preds,
                                                        cfg.trainer.select, cfg.cv.bagging)
        if held.any():
            holdout = train[["id"]][held].assign(target=targets[held], pred=bag(
                np.stack([p["pred"] for p in held_preds.values()]), cfg.cv.bagging))
    submission = None
    if data.test is not None:  # every file read and checked before the first is written
        preds = [read_preds(run.fold(fold).test_pred, data.test["id"], "the test file") for fold in run_folds]
        # the user's own column names, as the competition's sample submission has them
        submission = pd.DataFrame({cfg.data.id_col: data.test["id"],
                                   cfg.data.target_col: bag(np.stack(preds), cfg.cv.bagging)})
    write_csv(oof, run.oof)
    if holdout is not None:
        write_csv(holdout, run.holdout)
    if submission is not None:
        write_csv(submission, run.submission)
    return scores


def finish(cfg: DictConfig, run_dir: Path, data: Prepared, group: str, extra: dict) -> dict:
    """Collect the finished folds into the run's results, ``metrics.json`` and the tracker's ``-cv`` run."""
    scores, run = collect(cfg, run_dir, data, expected_folds(cfg)), RunDir(run_dir)
    scores["cv"] |= extra
    scores["hardware"] = hardware.record(cfg.trainer.precision)  # what every time in this file was measured on
    write_json(scores, run.metrics)
    with tracked(make(cfg.logger), run_dir=run_dir, group=group, name=f"{group}-cv", job_type="cv",
                 config=tracked_config(cfg)) as tracker_run:  # the CV score, the fold spread and the OOF table
        cv = scores["cv"]
        tracker_run.update_summary({"cv/mse": cv["mse"], "cv/rmse": cv["rmse"], "cv/fold_rmse_sd": cv["fold_rmse_sd"]}
                                   | holdout_summary(scores.get("selection", {})))
        tracker_run.table("oof", read_csv(run.oof, ("id",), f"collect again (make collect RUN={run_dir})",
                                          dtype={"id": str}))
    return scores


def holdout_summary(selection: dict) -> dict:
    """The tracker's ``cv/holdout_rmse`` and ``cv/selection_optimism`` (empty without a holdout)."""
    if "rmse" not in selection:
        return {}
    return {"cv/holdout_rmse": selection["rmse"], "cv/selection_optimism": selection["optimism"]["mean"]}


def result_line(run_dir: Path, scores: dict, cfg) -> str:
    """A run's last line: its folder, the CV score beside the mean predictor's, the holdout's verdict, and each
    scored selection policy's score when there are several (``metrics.selection_line``)."""
    c, folds = scores["cv"], cfg.cv.folds
    covers = "" if folds is None else f" over folds {list(folds)} only ({len(folds)} of {cfg.cv.n_splits} folds)"
    return (f"Run folder: {run_dir} | CV RMSE {c['rmse']:.4f} | CV MSE {c['mse']:.4f}{covers} (predicting the "
            f"training mean: RMSE {c['mean_predictor_rmse']:.4f}){metrics.selection_line(scores.get('selection', {}))}")


def collect_run(run_dir: Path) -> dict:
    """``make collect``: the run's config from its folder, the checks of a resume, then ``finish``."""
    cfg = read_run_config(run_dir)
    lock.hold_run(run_dir)  # no start, fold job or other collect writes the folder meanwhile
    missing = unfinished(run_dir, expected_folds(cfg))
    if missing:
        raise DataError(f"{run_dir}: fold(s) {', '.join(map(str, missing))} not finished (no "
                        f"fold_<k>/{FoldDir.RESULT}); train them with RESUME={run_dir}")
    data = prepare(cfg, run_dir, texts=False)  # the data and config checks of a resume
    cfg.name = RunDir(run_dir).run_name(cfg) or run_dir.parent.name  # ${hydra:...} cannot resolve out of Hydra
    return finish(cfg, run_dir, data, str(cfg.name), {})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="kfold-nlp collect", description=__doc__.splitlines()[0].replace("`", ""))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        scores = collect_run(args.run_dir)
    except (OneLineError, OSError) as err:
        refuse(err, f"collect again (make collect RUN={args.run_dir})", args.run_dir)
    print(result_line(args.run_dir, scores, read_run_config(args.run_dir)))


if __name__ == "__main__":
    main()
