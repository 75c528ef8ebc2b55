"""Inside a search's trial: after each fold, the running CV reported to the study and the pruner asked, in the run's
own process, so that a pruned trial stops before its next fold starts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import Exit
from ..files import write_json
from ..metrics import rmse
from ..rundir import RunDir, read_csv

ENV = "KFOLD_NLP_TRIAL"  # set by the search for a trial's process: storage, study, trial id, pruner



class Pruned(Exception):
    """The pruner stopped this trial after a fold: its run folder is marked, no CV is written."""

    exit = Exit.PRUNED


def running_cv(run_dir: Path, folds: list[int]) -> float:
    """The RMSE over the out-of-fold rows of ``folds`` so far: the CV score the trial is heading for."""
    run, fix = RunDir(run_dir), "start the trial again"
    table = read_csv(run.folds_csv, ("id", "target"), fix, dtype={"id": str}).set_index("id")
    oof = pd.concat([read_csv(run.fold(k).oof, ("id", "pred"), fix, dtype={"id": str}) for k in folds])
    return rmse(table.loc[oof["id"], "target"].to_numpy(float), oof["pred"].to_numpy(np.float64))


def trial_env(storage: str, study: str, trial_id: int, pruner: dict) -> dict[str, str]:
    return {ENV: json.dumps({"storage": storage, "study": study, "trial_id": trial_id, "pruner": pruner})}


def from_env():
    """The after-fold hook of a trial's run (``None`` outside a search): ``hook(run_dir, done, folds)`` reports the
    running CV over the folds ``done`` as step ``len(done)`` and raises ``Pruned`` when the pruner says so (never
    after the last fold: a trial that finished is complete)."""
    raw = os.environ.get(ENV)
    if not raw:
        return None
    import optuna

    from .spec import Pruner
    from .study import make_pruner

    info = json.loads(raw)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    storage = optuna.storages.RDBStorage(info["storage"], engine_kwargs={"connect_args": {"timeout": 60}}
                                         if info["storage"].startswith("sqlite") else {})
    study = optuna.load_study(study_name=info["study"], storage=storage, pruner=make_pruner(Pruner(**info["pruner"])))
    trial = optuna.trial.Trial(study, info["trial_id"])

    def hook(run_dir: Path, done: list[int], folds: list[int]) -> None:
        value = running_cv(run_dir, done)
        trial.report(value, step=len(done))
        if len(done) < len(folds) and trial.should_prune():
            write_json({"trial": trial.number, "folds_done": len(done), "of": len(folds), "running_cv_rmse": value,
                        "pruner": type(study.pruner).__name__}, RunDir(run_dir).pruned)  # no metrics.json
            raise Pruned(f"pruned after {len(done)} of {len(folds)} folds (running CV RMSE {value:.4f})")

    return hook
