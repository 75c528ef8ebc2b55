"""Weights & Biases: one run per fold, grouped by experiment, always finished (also when a fold fails).

Offline by default (``logger.mode``): the files land in ``<run folder>/wandb/`` and ``wandb sync`` uploads them.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from omegaconf import OmegaConf

os.environ.setdefault("WANDB_SILENT", "true")


def group_name(cfg, job: dict) -> str:
    """Experiment name for a single run; in a Hydra sweep one group per job, so no two jobs share runs."""
    if job.get("sweep_id") is not None:
        return f"{cfg.name}-{job['sweep_id']}-job{job['num']}"
    return str(cfg.name)


class NullRun:
    """Stands in for a W&B run when nothing is logged (``logger.mode=disabled``, or a rank other than 0)."""

    def __init__(self):
        self.summary = {}

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self, *args, **kwargs) -> None:
        pass


def run_id(run_dir, name: str) -> str:
    """The same W&B id every time this run folder logs this run (a fold, or the CV summary)."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)[:40]}-{digest}"


@contextmanager
def wandb_run(cfg, *, run_dir, group: str, name: str, job_type: str, tags=(), resume: bool = False):
    """A W&B run that is finished on every path out: exit code 1 when the block raised.

    Its id is fixed by the run folder and the run's name. ``resume=True`` (a fold continuing from its snapshot)
    continues that W&B run; otherwise a fold retried after a failure, or a resumed run's ``-cv`` run, replaces its
    earlier W&B run instead of adding one beside it (offline: the earlier attempt's files are removed).
    """
    if cfg.logger.mode == "disabled" or int(os.environ.get("RANK", 0)) != 0:  # under DDP only rank 0 logs
        run = NullRun()
    else:
        import wandb

        rid = run_id(run_dir, name)
        if cfg.logger.mode == "offline" and not resume:
            for old in Path(run_dir, "wandb").glob(f"offline-run-*-{rid}"):
                shutil.rmtree(old, ignore_errors=True)
        run = wandb.init(
            id=rid,
            resume="allow" if resume or cfg.logger.mode == "online" else None,
            project=cfg.logger.project,
            entity=cfg.logger.entity,
            mode=cfg.logger.mode,
            group=group,
            job_type=job_type,
            name=name,
            tags=[*cfg.logger.tags, *tags],
            config=OmegaConf.to_container(cfg, resolve=True),
            dir=str(run_dir),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", x_disable_stats=True),
        )
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        raise
    run.finish()


def log_cv(cfg, run_dir, group: str, metrics: dict, oof_path) -> None:
    """The run's ``-cv`` W&B run: the CV score, the fold spread and the OOF table."""
    with wandb_run(cfg, run_dir=run_dir, group=group, name=f"{group}-cv", job_type="cv") as wb:
        cv = metrics["cv"]
        wb.summary.update({"cv/mse": cv["mse"], "cv/rmse": cv["rmse"], "cv/fold_rmse_sd": cv["fold_rmse_sd"]})
        if not isinstance(wb, NullRun):
            import pandas as pd
            import wandb

            wb.log({"oof": wandb.Table(dataframe=pd.read_csv(oof_path, dtype={"id": str}))})
