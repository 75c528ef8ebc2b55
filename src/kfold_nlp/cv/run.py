"""A CV experiment from start to end: prepare the folder, fit each unfinished fold, collect."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ..rundir import RunDir, expected_folds
from ..track.base import group_name
from ..train.device import make_accelerator
from . import lock
from .collect import finish
from .fold import fit_fold
from .prepare import describe, prepare

log = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def run(cfg: DictConfig, run_dir: Path, job: dict | None = None, after_fold=None) -> dict:
    """Run (or resume) a CV experiment into ``run_dir``: prepare, fit every fold not finished yet, collect.

    Returns the metrics dict; empty off the main process, and in a fold job (``collect=false``), whose launcher
    collects once every fold is done. ``after_fold(run_dir, done, folds)``: called on the main process after each
    fold, kept or trained (a search's trial reports its running CV there, and may be pruned).
    """
    started = time.perf_counter()
    accelerator = make_accelerator(cfg.trainer)
    main = accelerator.is_main_process
    if not main:  # one console for a DDP run: rank 0's lines; the others say only what goes wrong
        logging.getLogger("kfold_nlp").setLevel(logging.WARNING)
    with lock.writing(cfg, run_dir, when=main):  # only rank 0 writes
        data = prepare(cfg, run_dir, main)
        log.info(describe(cfg, run_dir))  # once the folder is accepted: a refused start names no folder
        group, folds, trained = group_name(cfg, job or {}), expected_folds(cfg), []
        for i, fold in enumerate(folds):
            if RunDir(run_dir).fold(fold).finished():  # finished before an interruption: keep it
                log.info("fold %d: kept from the earlier start", fold)
            else:
                began = time.perf_counter()
                with lock.writing_fold(RunDir(run_dir).fold(fold).path, when=main):
                    fit_fold(cfg, run_dir, fold, data, accelerator, group, label=f"fold {fold} ({i + 1}/{len(folds)})")
                trained.append(time.perf_counter() - began)
                if main and i + 1 < len(folds):
                    left = sum(trained) / len(trained) * (len(folds) - i - 1)
                    log.info("%d of %d folds done; about %s left", i + 1, len(folds), _duration(left))
            if after_fold is not None and main:
                after_fold(run_dir, folds[:i + 1], folds)
        accelerator.wait_for_everyone()
        if not main or not cfg.get("collect", True):
            return {}
        return finish(cfg, run_dir, data, group, {"wall_time_s": round(time.perf_counter() - started, 1),
                                                 "processes": accelerator.num_processes})
