"""A CV experiment from start to end: prepare the folder, fit each unfinished fold, collect."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from ..rundir import expected_folds, fold_dir
from ..track.base import group_name
from ..train.runtime import make_accelerator
from . import lock
from .collect import finish
from .fold import fit_fold
from .prepare import describe, prepare

log = logging.getLogger(__name__)


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
        group, folds = group_name(cfg, job or {}), expected_folds(cfg)
        for i, fold in enumerate(folds):
            if (fold_dir(run_dir, fold) / "result.json").exists():  # finished before an interruption: keep it
                log.info("fold %d: kept from the earlier start", fold)
            else:
                with lock.writing_fold(fold_dir(run_dir, fold), when=main):
                    fit_fold(cfg, run_dir, fold, data, accelerator, group)
            if after_fold is not None and main:
                after_fold(run_dir, folds[:i + 1], folds)
        accelerator.wait_for_everyone()
        if not main or not cfg.get("collect", True):
            return {}
        return finish(cfg, run_dir, data, group, {"wall_time_s": round(time.perf_counter() - started, 1),
                                                 "processes": accelerator.num_processes})
