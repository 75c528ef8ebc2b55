"""The job behind ``make cv``: a composed config made ready (resume, precision, validation), run, and ended with one
line and an exit status on any error (``errors.report``)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from ..config.paths import offline_for_local
from ..errors import Exit, is_reported, on_sigterm, report
from ..rundir import RunDir, check_run_folder
from . import lock, orphans

log = logging.getLogger("kfold_nlp")


class Job:
    """Where this start writes and how it was started: a single run, a sweep's (or search's) job, or one of a
    launcher's parallel fold jobs (``output``: it writes into that run folder)."""

    def __init__(self, cfg: DictConfig) -> None:
        hc = HydraConfig.get()
        self.multirun = hc.mode == RunMode.MULTIRUN
        self.fold_job = cfg.get("output") is not None
        self.run = RunDir(cfg.output if self.fold_job else hc.runtime.output_dir)
        self.overrides = list(hc.overrides.task)
        # the job's folder name: its number in a sweep, its trial's in a search (one job a process there)
        self.info = {"num": Path(hc.runtime.output_dir).name, "sweep_id": Path(hc.sweep.dir).name} \
            if self.multirun and not self.fold_job else {}

    def remove_stub(self) -> None:
        """A start refused for bad input leaves no folder that looks like a run (never one another process
        writes)."""
        if self.run.is_stub(lock.FILES) and lock.is_free(self.run.path):
            logging.shutdown()  # close the log file before removing it
            self.run.remove()

    def end(self, err: BaseException) -> NoReturn:
        """End the start on ``err``: its line and exit status; in a sweep, a failed job is Hydra's to record."""
        ours_in_a_sweep = isinstance(err, KeyboardInterrupt) or getattr(err, "exit", None) == Exit.PRUNED
        if not is_reported(err) or (self.multirun and not ours_in_a_sweep):
            raise err
        if isinstance(err, KeyboardInterrupt):
            self.remove_stub()
            d = self.run.path
            kept = f"finished folds are kept in {d}; continue with RESUME={d} (or resume={d})" if d.exists() else None
            code = report(err, kept=kept)
            if orphans.abandoned():  # its launcher is gone: end the worker process, not only this job
                orphans.exit_now(code)
            sys.exit(code)
        started = self.run.path.exists() and not self.run.is_stub(lock.FILES)
        self.remove_stub()
        then = f"resume with RESUME={self.run.path}" if started else "start the run again"
        sys.exit(report(err, then=then, path=self.run.path))


def check_config(cfg: DictConfig, check_files: bool = True) -> None:
    """Every key of ``cfg`` (``config.schema``), what only the backbone knows (its positions, its tokenizer's
    special tokens), and the run folders it names (``check_files``): one ``ConfigError`` line for the first that is
    wrong."""
    from ..config.schema import validate
    from ..model.classical import is_classical
    from ..model.regressor import check_backbone

    validate(cfg, check_files=check_files)
    if not is_classical(cfg.model):
        check_backbone(cfg.model)
        check_lora_regularizer(cfg)
    if cfg.trainer.get("compile"):
        from ..train.compiled import check_compilable

        check_compilable()
    for key in ("resume", "distill.teacher") if check_files else ():
        if OmegaConf.select(cfg, key) is not None:
            check_run_folder(Path(OmegaConf.select(cfg, key)), key)


def check_lora_regularizer(cfg: DictConfig) -> None:
    """Refuse a regularizer that acts on the backbone's own weights (Mixout) with LoRA, which freezes them."""
    from hydra.utils import get_class

    from ..errors import ConfigError
    from ..model.lora import is_lora

    cls = get_class(cfg.regularizer._target_)
    if is_lora(cfg.model) and getattr(cls, "acts_on_backbone_weights", False):
        name = cls.__module__.rsplit(".", 1)[-1]
        raise ConfigError(f"regularizer={name}: acts on the backbone's own weights, which model.peft=lora freezes; "
                          f"choose another regularizer or model.peft=null")


def composed_config(overrides: list[str], check: bool = True) -> DictConfig:
    """The config a run would have under these overrides, composed outside Hydra's main (a search's trial, a
    pretraining), resolved (its name too) and, with ``check``, checked as a run's is: one line for the first bad
    key."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import open_dict

    from ..config.paths import CONFIG_DIR
    from ..errors import ConfigError

    try:
        with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except HydraException as err:
        raise ConfigError(f"{' '.join(overrides)}: {str(err).splitlines()[0]}") from None
    hydra, before = HydraConfig.instance(), HydraConfig.instance().cfg
    hydra.set_config(cfg)  # so that ${hydra:...} (the run's name) resolves
    with open_dict(cfg):
        del cfg["hydra"]  # unresolved: its run folder resolver would create a folder
    try:
        OmegaConf.resolve(cfg)
    finally:
        hydra.cfg = before
    if check:
        check_config(cfg)
    return cfg


def prepare_config(cfg: DictConfig, job: Job) -> DictConfig:
    """The config this start runs: a resumed run's own (``RESUME=<folder>`` is enough), ``precision=auto``
    replaced by what this machine runs natively, every key checked, and the tracker able to log."""
    from ..model.classical import is_classical
    from ..track.base import make
    from ..train.precision import resolve_precision
    from .prepare import adopt_run_config

    if cfg.get("resume") is not None and job.run.is_stub(lock.FILES):  # Hydra made the folder a typo named
        job.remove_stub()
    if cfg.get("resume") is not None:
        cfg = adopt_run_config(cfg, job.overrides)
        offline_for_local(cfg.model.get("backbone"), cfg.model.get("tokenizer"))
    note = None
    if cfg.trainer.get("precision") is not None:  # the resolved value is what run_config.yaml and W&B record
        cfg.trainer.precision, note = resolve_precision(cfg.trainer.precision)
    check_config(cfg)
    make(cfg.logger).check()  # e.g. W&B online without an API key: refused before the run folder fills
    if note is not None and not is_classical(cfg.model):  # the first line: what precision=auto chose and why
        (log.warning if note.startswith("warning") else log.info)(note)
    return cfg


def train(cfg: DictConfig) -> float:
    """Run (or resume) the CV experiment ``cfg`` describes; returns its CV RMSE (what a sweeper minimises)."""
    job = Job(cfg)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    offline_for_local(cfg.model.get("backbone"), cfg.model.get("tokenizer"))
    from ..search.report import from_env  # the heavy imports once a local backbone has set offline mode
    from . import launch
    from .collect import result_line
    from .run import run

    if job.fold_job:
        launch.pick_gpu(cfg)
    try:
        cfg = prepare_config(cfg, job)
        if cfg.get("launcher") and not job.multirun:
            metrics = launch.run(cfg, job.run.path, job.overrides)
        else:
            metrics = run(cfg, job.run.path, job.info, after_fold=from_env())
    except BaseException as err:  # noqa: BLE001  (Ctrl-C and SIGTERM too: they end with their own line)
        job.end(err)
    if not metrics:  # not the main process
        return float("nan")
    if not job.multirun:
        job.run.point_latest(cfg.data.get("name"))
    log.info(result_line(job.run.path, metrics, cfg))
    return metrics["cv"]["rmse"]
