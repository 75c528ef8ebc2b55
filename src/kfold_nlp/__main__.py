"""``python -m kfold_nlp [overrides]``: one CV experiment, or a sweep with ``-m``."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import threading
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config.paths import CONFIG_DIR, offline_for_local
from .cv import lock, orphans
from .errors import DataError, Exit, environment_fault, refuse

log = logging.getLogger("kfold_nlp")


STUB = {".hydra", "run.log", *lock.FILES}  # what Hydra (and the run lock) put into a run folder before our code runs


def _point_latest(run_dir: Path, data_name: str | None) -> None:
    """``outputs/<experiment>/latest`` -> the newest finished run folder (its real name, never the link itself), and
    ``latest-<data>`` -> the newest on that data (``data.name``): what ``make predict``/``collect`` take by default,
    so that a run on another data set never becomes theirs silently."""
    run_dir = run_dir.resolve()
    for name in ["latest", *([f"latest-{data_name}"] if data_name else [])]:
        tmp = run_dir.parent / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name)
        os.replace(tmp, run_dir.parent / name)


def is_stub(run_dir: Path) -> bool:
    """A folder holding only what Hydra wrote at start-up: no result of ours."""
    return run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= STUB


def _remove_stub(run_dir: Path) -> None:
    """A start refused for bad input leaves no folder that looks like a run (never one another process writes)."""
    if is_stub(run_dir) and lock.is_free(run_dir):
        logging.shutdown()  # close the log file before removing it
        shutil.rmtree(run_dir, ignore_errors=True)
        if run_dir.parent.is_dir() and not any(run_dir.parent.iterdir()):
            run_dir.parent.rmdir()


class Terminated(KeyboardInterrupt):
    """SIGTERM (a timeout, a preemption, ``kill``): the run ends as after Ctrl-C, with the line that resumes it."""


def _terminate(signum, frame):
    raise Terminated()


def resolve_run_precision(cfg: DictConfig) -> str | None:
    """Replace ``trainer.precision=auto`` by what this machine runs natively (the resolved value is what
    ``run_config.yaml``, ``metrics.json`` and W&B record); returns the line that says why, or a warning."""
    from .train.runtime import resolve_precision

    if cfg.trainer.get("precision") is None:
        return None
    cfg.trainer.precision, note = resolve_precision(cfg.trainer.precision)
    return note


@hydra.main(config_path=CONFIG_DIR, config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    fold_job = cfg.get("output") is not None  # one of a launcher's parallel fold jobs: writes into its run folder
    run_dir = Path(cfg.output) if fold_job else Path(hc.runtime.output_dir)
    # the job's folder name: its number in a sweep, its trial's in a search (one job a process there)
    job = {"num": Path(hc.runtime.output_dir).name, "sweep_id": Path(hc.sweep.dir).name} \
        if multirun and not fold_job else {}
    offline_for_local(cfg.model.get("backbone"), cfg.model.get("tokenizer"))
    from .cv.launch import pick_gpu

    if fold_job:
        pick_gpu(cfg)
    # heavy imports after Hydra has parsed the command line (fast --help, --cfg)
    from .config.schema import ConfigError, validate
    from .cv import launch
    from .cv.collect import result_line
    from .cv.prepare import adopt_run_config
    from .cv.run import run
    from .search.report import Pruned, from_env
    from .track.base import make
    from .train.loop import Diverged

    try:
        if cfg.get("resume") is not None and is_stub(run_dir):  # Hydra made the folder a typo named
            _remove_stub(run_dir)
        if cfg.get("resume") is not None:  # the run's own config: RESUME=<folder> is enough
            cfg = adopt_run_config(cfg, list(hc.overrides.task))
            offline_for_local(cfg.model.get("backbone"), cfg.model.get("tokenizer"))
        note = resolve_run_precision(cfg)
        validate(cfg)
        make(cfg.logger).check()  # e.g. W&B online without an API key: refused before the run folder fills
        if note is not None:  # the run's first line: what precision=auto chose and why, or bf16's warning
            (log.warning if note.startswith("warning") else log.info)(note)
        if cfg.get("launcher") and not multirun:
            metrics = launch.run(cfg, run_dir, list(hc.overrides.task))
        else:
            metrics = run(cfg, run_dir, job, after_fold=from_env())
    except Pruned as err:  # a search's trial: its folder keeps the finished folds and pruned.json, no CV
        log.info("%s", err)
        sys.exit(Exit.PRUNED)
    except (DataError, ConfigError) as err:
        if multirun:
            raise
        _remove_stub(run_dir)
        refuse(err)
    except Diverged as err:
        if multirun:
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(Exit.DIVERGED)
    except Exception as err:  # a full disk, a read-only folder, W&B unreachable: one line; anything else as it is
        fault = environment_fault(err, run_dir)
        if fault is None or multirun:
            raise
        started = run_dir.exists() and not is_stub(run_dir)
        _remove_stub(run_dir)
        refuse(fault, f"resume with RESUME={run_dir}" if started else "start the run again")
    except KeyboardInterrupt as err:
        _remove_stub(run_dir)
        how = "terminated" if isinstance(err, Terminated) else "interrupted"
        if run_dir.exists():
            print(f"{how}: finished folds are kept in {run_dir}; continue with RESUME={run_dir} "
                  f"(or resume={run_dir})", file=sys.stderr)
        else:
            print(f"{how} before anything was written", file=sys.stderr)
        code = Exit.TERMINATED if isinstance(err, Terminated) else Exit.INTERRUPTED
        if orphans.abandoned():  # its launcher is gone: end the worker process, not only this job
            orphans.exit_now(code)
        sys.exit(code)
    if not metrics:  # not the main process
        return float("nan")
    if not multirun:
        _point_latest(run_dir, cfg.data.get("name"))
    log.info(result_line(run_dir, metrics, cfg))
    return metrics["cv"]["rmse"]


if __name__ == "__main__":
    main()
