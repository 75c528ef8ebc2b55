"""Weights & Biases: one run per fold, grouped by experiment, always finished (also when a fold fails).

Offline by default (``logger.mode``): the files land in ``<run folder>/wandb/`` and ``wandb sync`` uploads them.
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import secrets
import shutil
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

from omegaconf import OmegaConf

from . import hardware
from .errors import ConfigError, EnvironmentFault

os.environ.setdefault("WANDB_SILENT", "true")
log = logging.getLogger(__name__)


def check_online(logger_cfg) -> None:
    """An online run needs a W&B API key; without one ``wandb.init`` fails at the first fold, after the run
    folder was made. Refused at the start instead, in one line (``ConfigError``: exit 2)."""
    if logger_cfg.mode != "online" or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
        return
    if os.environ.get("WANDB_API_KEY"):
        return
    host = _host()
    with suppress(OSError, netrc.NetrcParseError):
        if netrc.netrc().authenticators(host):
            return
    raise ConfigError(f"logger.mode=online: no W&B API key for {host} (set WANDB_API_KEY or run `wandb login`); "
                      f"or use logger.mode=offline and `wandb sync` later")


def _host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname


def group_name(cfg, job: dict) -> str:
    """Experiment name for a single run; in a Hydra sweep one group per job, so no two jobs share runs."""
    if job.get("sweep_id") is not None:
        return f"{cfg.name}-{job['sweep_id']}-job{job['num']}"
    return str(cfg.name)


class NullRun:
    """Stands in for a W&B run when nothing is logged (``logger.mode=disabled``, or a rank other than 0)."""

    id = None

    def __init__(self):
        self.summary = {}

    def log(self, *args, **kwargs) -> None:
        pass

    def finish(self, *args, **kwargs) -> None:
        pass


def id_stem(run_dir, name: str) -> str:
    """What every W&B id of this run folder's run ``name`` (a fold, or the CV summary) starts with."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)[:40]}-{digest}"


def _init(wandb, stem: str, run_id: str | None, **kwargs):
    """``wandb.init`` under ``run_id`` (continuing that run) or a new id; when the W&B service still holds
    ``run_id`` for the process that was just killed ("run ID ... is in use"), a new run that records
    ``continues_run_id`` instead (wandb 0.31 keeps the stream for a while after its process died)."""
    if run_id is not None:
        try:
            return wandb.init(id=run_id, resume="allow", **kwargs)
        except Exception as err:  # noqa: BLE001  (wandb raises its own ServerResponseError)
            if "in use" not in str(err):
                raise
            log.warning("W&B run %s is still held by the killed process; logging to a new run that continues it",
                        run_id)
            run = wandb.init(id=f"{stem}-{secrets.token_hex(3)}", **kwargs)
            run.summary["continues_run_id"] = run_id
            return run
    return wandb.init(id=f"{stem}-{secrets.token_hex(3)}", **kwargs)


@contextmanager
def wandb_run(cfg, *, run_dir, group: str, name: str, job_type: str, tags=(), run_id: str | None = None):
    """A W&B run that is finished on every path out: exit code 1 when the block raised.

    ``run_id`` (a fold continuing from its snapshot, which recorded it) continues that W&B run. Otherwise the run
    gets a new id that starts with ``id_stem(run_dir, name)``, and offline the files of an earlier attempt with that
    stem (a fold retried after a failure, a resumed run's ``-cv`` run) are removed: replaced, not added beside it.
    """
    if cfg.logger.mode == "disabled" or int(os.environ.get("RANK", 0)) != 0:  # under DDP only rank 0 logs
        run = NullRun()
    else:
        import wandb

        stem = id_stem(run_dir, name)
        if run_id is None and cfg.logger.mode == "offline":
            for old in Path(run_dir, "wandb").glob(f"offline-run-*-{stem}*"):
                shutil.rmtree(old, ignore_errors=True)
        try:
            run = _init(
                wandb, stem, run_id,
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                mode=cfg.logger.mode,
                group=group,
                job_type=job_type,
                name=name,
                tags=[*cfg.logger.tags, *tags],
                config=OmegaConf.to_container(cfg, resolve=True)
                | {"hardware": hardware.record(OmegaConf.select(cfg, "trainer.precision"))},
                dir=str(run_dir),
                reinit="finish_previous",
                settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        except wandb.errors.CommError as err:  # no network, the service down, a key it refuses
            first = str(err).strip().splitlines()[0][:200]
            raise EnvironmentFault(f"W&B ({_host()}): {first}; check the network and the API key (or use "
                                   f"logger.mode=offline, then `wandb sync`)") from None
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
