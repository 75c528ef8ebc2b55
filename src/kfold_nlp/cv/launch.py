"""The folds of one run as parallel Hydra jobs, then one collect: ``make cv LAUNCHER=joblib|submitit_local|slurm``.

The launching process prepares the run folder (data checks, ``folds.csv``, ``run_config.yaml``), starts a Hydra
multirun with one job per unfinished fold (``cv.folds=[k]``), each writing ``fold_<k>/`` into that same folder
(``output=<run folder>``, ``collect=false``), and collects once they are all finished. Hydra's launcher plugins do
the scheduling: ``joblib`` (processes on this machine), ``submitit_local``, and ``slurm`` (a SLURM array through
submitit, ``conf/hydra/launcher/slurm.yaml``). Each job's own Hydra folder is ``<run folder>/.jobs/<n>/``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from ..config.rules import override_key
from ..errors import DataError, EnvironmentFault
from ..files import read_json
from ..rundir import RunDir, expected_folds, unfinished
from ..train import hardware, threads
from . import lock, orphans
from .collect import finish
from .fold import fold_line
from .prepare import describe, prepare

log = logging.getLogger(__name__)

DROPPED = ("launcher", "resume", "output", "collect", "cv.folds", "hydra.run.dir")  # set here for every job


def job_command(cfg, run_dir: Path, overrides: list[str], folds: list[int]) -> list[str]:
    """The multirun that trains ``folds``, one job each, into ``run_dir``; each job takes the run's own config
    (``resume``: its ``run_config.yaml``), so a launcher start resumed from the folder alone trains the same run."""
    kept = [o for o in overrides if override_key(o) not in DROPPED and not override_key(o).startswith("hydra/launcher")]
    return [sys.executable, "-m", "kfold_nlp", "-m", *kept, f"hydra/launcher={cfg.launcher}", f"output={run_dir}",
            f"resume={run_dir}", "collect=false", "cv.folds=" + ",".join(f"[{k}]" for k in folds),
            f"hydra.sweep.dir={run_dir / '.jobs'}"]


def machine_fault(run_dir: Path) -> str | None:
    """The first fold job's error that was the machine's (an ``OSError`` such as a full disk), from the jobs'
    ``job_status.json`` (``analysis.callbacks``)."""
    for status in sorted((run_dir / ".jobs").glob(f"*/{RunDir.JOB_STATUS}")):
        try:
            error = read_json(status).get("error") or ""
        except (OSError, ValueError):
            continue
        if error.split(":")[0] in OS_ERRORS:
            return error
    return None


OS_ERRORS = {cls.__name__ for cls in (OSError, *OSError.__subclasses__())}


def run(cfg, run_dir: Path, overrides: list[str]) -> dict:
    """Prepare, train the unfinished folds as parallel jobs, collect; returns the metrics."""
    import torch

    started = time.perf_counter()
    lock.hold_run(run_dir)  # held since Hydra started this process (lock.RunLock); taken here for any other caller
    data = prepare(cfg, run_dir, texts=False)
    log.info(describe(cfg, run_dir))
    folds = unfinished(run_dir, expected_folds(cfg))
    if folds:
        # a job picks GPU k mod n; the jobs, and the multirun process that starts them, end if this process dies
        env = os.environ | {"KFOLD_NLP_GPUS": str(torch.cuda.device_count())} | orphans.child_env()
        jobs = local_jobs(cfg.launcher, overrides, len(folds))
        if jobs:  # processes side by side on this machine: each gets its share of the cores, not all of them
            env[threads.THREADS_ENV] = str(threads.split_cores(jobs))
            if not torch.cuda.is_available() and jobs > 1:
                log.info("note: %d fold jobs share this machine's %d cores (%d thread(s) each); on a CPU one fold at "
                         "a time with every core is usually as fast (docs/distributed.md)", jobs,
                         hardware.usable_cores(), threads.split_cores(jobs))
        subprocess.run(job_command(cfg, run_dir, overrides, folds), env=env)
        missing = unfinished(run_dir, folds)
        if missing:
            what = f"{run_dir}: fold job(s) {', '.join(map(str, missing))} did not finish"
            then = f"rerun with RESUME={run_dir} to train only those"
            fault = machine_fault(run_dir)
            if fault:  # a full disk, say: the machine's fault, not the input's (exit 75)
                raise EnvironmentFault(f"{what} ({fault}); fix it and {then}")
            raise DataError(f"{what} (their logs: {run_dir / '.jobs'}/<n>/{RunDir.LOG}); {then}")
        for fold in folds:  # the jobs' lines, in this run's console and run.log too
            log.info(fold_line(fold, RunDir(run_dir).fold(fold).read_result(), cfg))
    return finish(cfg, run_dir, data, str(cfg.name), {"wall_time_s": round(time.perf_counter() - started, 1),
                                                         "processes": 1})


def local_jobs(launcher: str, overrides: list[str], folds: int) -> int | None:
    """How many fold jobs run at once on this machine (None: on other machines, SLURM's). joblib runs
    ``hydra.launcher.n_jobs`` of them (-1, its default: one per core), submitit_local all at once."""
    if launcher == "joblib":
        given = [o.split("=", 1)[1] for o in overrides if override_key(o) == "hydra.launcher.n_jobs"]
        n_jobs = int(given[-1]) if given and given[-1].lstrip("-").isdigit() else -1
        return min(folds, hardware.usable_cores() if n_jobs < 1 else n_jobs)
    if launcher == "submitit_local":
        return folds
    return None


def pick_gpu(cfg) -> None:
    """In a fold job on a machine with several GPUs, fold k takes GPU k mod n (before CUDA starts)."""
    n = int(os.environ.get("KFOLD_NLP_GPUS", "0"))
    folds = cfg.cv.get("folds")
    if n > 1 and folds is not None and len(folds) == 1:
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", str(folds[0] % n))
