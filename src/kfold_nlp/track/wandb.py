"""Weights & Biases (``logger=wandb``): the only module that imports wandb, and only once a run is started.

Offline by default (``logger.mode``): the files land in ``<run folder>/wandb/`` and ``wandb sync`` uploads them.
``logger.mode=disabled`` tracks nothing (the spelling from before ``logger=none``).
"""

from __future__ import annotations

import hashlib
import logging
import netrc
import os
import re
import secrets
import shutil
from contextlib import suppress
from pathlib import Path
from urllib.parse import urlparse

from ..config.rules import Choice, List, Str
from ..errors import ConfigError, EnvironmentFault
from .base import Run, Tracker

os.environ.setdefault("WANDB_SILENT", "true")


log = logging.getLogger(__name__)


def id_stem(run_dir, name: str) -> str:
    """What every W&B id of this run folder's run ``name`` (a fold, or the CV summary) starts with."""
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '-', name)[:40]}-{digest}"


def _host() -> str:
    return urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname


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


class WandbRun(Run):
    def __init__(self, run):
        self.run, self.id = run, run.id

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def update_summary(self, values: dict) -> None:
        self.run.summary.update(values)

    def table(self, key: str, frame) -> None:
        import wandb

        self.run.log({key: wandb.Table(dataframe=frame)})

    def finish(self, failed: bool = False) -> None:
        if failed:
            self.run.finish(exit_code=1)
        else:
            self.run.finish()


MODES = ("offline", "online", "disabled")  # logger.mode
EMPTY_LOG = 64  # bytes: an offline .wandb file this small holds its header and no record (a process killed early)


class WandbTracker(Tracker):
    """One W&B run per fold, grouped by experiment; an online run needs an API key (``check``)."""

    params = {"mode": Choice(*MODES), "project": Str, "entity": Str | None, "tags": List}

    def __init__(self, mode: str = "offline", project: str = "kfold-nlp", entity: str | None = None, tags=()):
        self.mode, self.project, self.entity, self.tags = mode, project, entity, list(tags)

    def check(self) -> None:
        """Without an API key ``wandb.init`` fails at the first fold, after the run folder was made: refused at the
        start instead, in one line (``ConfigError``: exit 2)."""
        if self.mode != "online" or os.environ.get("WANDB_MODE") in ("offline", "disabled", "dryrun"):
            return
        if os.environ.get("WANDB_API_KEY"):
            return
        host = _host()
        with suppress(OSError, netrc.NetrcParseError):
            if netrc.netrc().authenticators(host):
                return
        raise ConfigError(f"logger.mode=online: no W&B API key for {host} (set WANDB_API_KEY or run `wandb login`); "
                          f"or use logger.mode=offline and `wandb sync` later")

    def start(self, *, run_dir, name, group, job_type, config, tags=(), run_id=None) -> Run:
        """A new run gets an id that starts with ``id_stem(run_dir, name)``; offline the files of an earlier attempt
        with that stem (a fold retried after a failure, a resumed run's ``-cv`` run) are removed: replaced, not
        added beside it. ``run_id`` continues that run instead."""
        if self.mode == "disabled":
            return Run()
        import wandb

        stem = id_stem(run_dir, name)
        if run_id is None and self.mode == "offline":
            for old in Path(run_dir, "wandb").glob(f"offline-run-*-{stem}*"):
                shutil.rmtree(old, ignore_errors=True)
        elif self.mode == "offline":  # a killed attempt whose log holds nothing (its history is replayed)
            for old in Path(run_dir, "wandb").glob(f"offline-run-*-{run_id}"):
                if all(f.stat().st_size < EMPTY_LOG for f in old.glob("*.wandb")):
                    shutil.rmtree(old, ignore_errors=True)
        try:
            return WandbRun(_init(
                wandb, stem, run_id, project=self.project, entity=self.entity, mode=self.mode, group=group,
                job_type=job_type, name=name, tags=[*self.tags, *tags], config=config, dir=str(run_dir),
                reinit="finish_previous", settings=wandb.Settings(console="off", x_disable_stats=True)))
        except wandb.errors.CommError as err:  # no network, the service down, a key it refuses
            first = str(err).strip().splitlines()[0][:200]
            raise EnvironmentFault(f"W&B ({_host()}): {first}; check the network and the API key (or use "
                                   f"logger.mode=offline, then `wandb sync`)") from None
