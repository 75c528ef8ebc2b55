"""``make refit RUN=<run>``: one more model, trained on every training row of a finished run, into ``<run>/refit/``.

It trains with the run's config and seed for the number of steps the folds chose, scaled to the larger set: the
median of the folds' ``best_step`` times (rows of the refit / mean rows a fold trained on), with the schedule planned
over the run's epochs on the refit's rows, so it stops where the folds' choice fell in their schedule. It has no
validation rows, so it keeps its last weights (their EMA under ``trainer.select=ema``: ``best``, ``best_epoch`` and
``swa`` need evaluations) and no CV score is ever reported for it; with ``cv.holdout`` its holdout RMSE is. The
holdout rows stay out of it like out of every fold. ``make predict`` and ``make export`` bag it with ``--models
refit|all``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from safetensors.torch import save_model

from .. import metrics
from ..data.folds import HOLDOUT
from ..data.loading import EncodedRows, make_loader
from ..errors import DataError, OneLineError, refuse
from ..model import lora
from ..model.classical import is_classical
from ..rundir import RunDir, expected_folds, read_run_config, unfinished
from ..train import selection, snapshot
from ..train.device import make_accelerator
from ..train.loop import predict, train_fold
from ..train.seeds import stream_seed
from . import lock
from .fold import build_fold_model
from .prepare import prepare

log = logging.getLogger(__name__)
STATISTIC = "median best step of the folds x refit rows / mean fold training rows"


def refit_steps(best_steps: list[int], refit_rows: int, fold_rows: list[int]) -> int:
    """The optimizer steps of the refit (``STATISTIC``), at least 1."""
    return max(1, round(float(np.median(best_steps)) * refit_rows / float(np.mean(fold_rows))))


def refit(run_dir: Path) -> dict:
    """Train and write ``<run>/refit/`` (model, test and holdout predictions, then ``result.json``)."""
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    if is_classical(cfg.model):  # checked before the lock and any folder: nothing is written
        raise DataError(f"{run_dir}: a scikit-learn run has no refit (its pipelines train in one fit, not for a "
                        f"number of steps); predict with its fold models: make predict RUN={run_dir}")
    lock.hold_run(run_dir)
    folds = expected_folds(cfg)
    if missing := unfinished(run_dir, folds):
        raise DataError(f"{run_dir}: fold(s) {', '.join(map(str, missing))} not finished; the refit takes its steps "
                        f"from every fold (train them with RESUME={run_dir})")
    if cfg.get("distill") is not None and cfg.distill.teacher is not None:
        raise DataError(f"{run_dir}: distilled from {cfg.distill.teacher}, whose fold models saw every row: a refit "
                        f"would learn soft targets of its own validation rows; refit the teacher instead")
    results = {k: RunDir(run_dir).fold(k).read_result() for k in folds}
    data = prepare(cfg, run_dir)  # the data and config checks of a resume, and the tokenized texts
    rows, held = np.flatnonzero(data.folds != HOLDOUT), np.flatnonzero(data.folds == HOLDOUT)
    fold_rows = [int(np.sum((data.folds != k) & (data.folds != HOLDOUT))) for k in folds]
    steps = refit_steps([r["best_step"] for r in results.values()], len(rows), fold_rows)
    cfg = OmegaConf.merge(cfg, {"trainer": {"select": selection.without_evaluations(cfg.trainer.select),
                                            "also_select": []}})
    out, workers, targets = RunDir(run_dir).refit, cfg.trainer.num_workers, data.targets
    out.path.mkdir(exist_ok=True)
    accelerator = make_accelerator(cfg.trainer)
    task, model, regularizer = build_fold_model(cfg, len(folds), accelerator.process_index)  # its own streams

    def loader(rows_, train=False):
        table = EncodedRows(data.enc, rows_, targets, {c: data.train[c].to_numpy() for c in task.columns})
        size = cfg.trainer.batch_size if train else cfg.trainer.eval_batch_size
        return make_loader(table, data.tokenizer, size, train, stream_seed(cfg.seed, len(folds)), workers)

    res = train_fold(model, regularizer, loader(rows, train=True), None, None, cfg, accelerator, fold=len(folds),
                     task=task, snapshot_dir=out.path, holdout_loader=loader(held) if len(held) else None,
                     max_steps=steps, label="refit")
    model.load_state_dict(res.best_state)
    model = lora.merged(model)
    result = {"steps": res.steps, "planned_steps": res.planned_steps, "statistic": STATISTIC,
              "fold_best_steps": [r["best_step"] for r in results.values()], "rows": len(rows),
              "select": cfg.trainer.select, "train_time_s": round(res.train_time, 2)}
    if len(held):
        result["holdout_rmse"] = metrics.rmse(targets[held], res.holdout_pred[cfg.trainer.select])
    test_pred = None
    if data.test is not None:
        test_loader = accelerator.prepare(make_loader(EncodedRows(data.test_enc, np.arange(len(data.test))),
                                                      data.tokenizer, cfg.trainer.eval_batch_size, False,
                                                      num_workers=workers))
        test_pred = predict(model, test_loader, accelerator)
    if accelerator.is_main_process:
        tables = {}
        if test_pred is not None:
            tables["test_pred"] = pd.DataFrame({"id": data.test["id"], "pred": test_pred})
        if len(held):
            tables["holdout_pred"] = pd.DataFrame({"id": data.train["id"].iloc[held],
                                                   "pred": res.holdout_pred[cfg.trainer.select]})
        out.write(result, tables=tables, model_writer=lambda path: save_model(model, str(path)))  # result.json last
        if not cfg.trainer.keep_snapshot:
            snapshot.remove(out.path)
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0].replace("``", "").strip("`"))
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    try:
        result = refit(args.run_dir)
    except (OneLineError, OSError) as err:
        refuse(err, f"refit again (make refit RUN={args.run_dir})", args.run_dir)
    held = f" | holdout RMSE {result['holdout_rmse']:.4f}" if "holdout_rmse" in result else ""
    print(f"Refit: {RunDir(args.run_dir).refit.path} | {result['steps']} steps on {result['rows']} rows "
          f"({STATISTIC}: folds' best steps {result['fold_best_steps']}), {result['select']} weights{held} "
          f"(no CV score: no validation rows)")


if __name__ == "__main__":
    main()
