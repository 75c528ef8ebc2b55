"""Weights & Biases: one run per fold, grouped by experiment, always finished (also when a fold fails).

Offline by default (``logger.mode``): the files land in ``<run folder>/wandb/`` and ``wandb sync`` uploads them.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from omegaconf import OmegaConf

os.environ.setdefault("WANDB_SILENT", "true")


def group_name(cfg, job: dict) -> str:
    """Experiment name for a single run; in a Hydra sweep one group per job, so no two jobs share runs."""
    if job.get("sweep_id") is not None:
        return f"{cfg.name}-{job['sweep_id']}-job{job['num']}"
    return str(cfg.name)


@contextmanager
def wandb_run(cfg, *, run_dir, group: str, name: str, job_type: str, tags=()):
    """A W&B run that is finished on every path out: exit code 1 when the block raised."""
    import wandb

    if cfg.logger.mode == "disabled" or int(os.environ.get("RANK", 0)) != 0:  # under DDP only rank 0 logs
        run = wandb.init(mode="disabled")
    else:
        run = wandb.init(
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
