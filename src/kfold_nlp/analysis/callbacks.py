"""Hydra callback: the sweep summary (``sweep.csv``, ``sweep.md``) kept up to date in the sweep folder.

Rewritten after every job, not only at the end: Hydra 1.3 skips ``on_multirun_end`` when a job failed, and with the
joblib / submitit launchers ``on_job_end`` runs inside the worker. Each rewrite re-reads the whole sweep folder under
a file lock, so the last job to finish writes the complete table whatever the launcher. A launcher's fold jobs
(``output=<run folder>``) are folds of one run, not runs: their table (``<run>/.jobs/sweep.md``) lists each job's
fold, state and score, read from the run's ``fold_<k>/result.json``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from filelock import FileLock
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from ..files import write_json
from ..rundir import RunDir

log = logging.getLogger(__name__)


def write_summary(sweep_dir: Path, run_dir: Path | None = None) -> str | None:
    """The summary's ``best trial:`` line (``run_dir``: the fold jobs' table of that run instead). Never raises: a
    summary problem must not fail the job that triggered it (the next job rewrites it)."""
    from .sweep import best_trial, write_fold_jobs, write_sweep  # pandas once a job has run

    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(sweep_dir / ".sweep.lock"):
            if run_dir is not None:
                write_fold_jobs(sweep_dir, run_dir)
                return None
            jobs = write_sweep(sweep_dir)
        return best_trial(sweep_dir, jobs) if len(jobs) else None
    except Exception as err:  # noqa: BLE001
        log.warning("sweep summary not written: %r", err)
        return None


class SweepSummary(Callback):
    def on_job_start(self, config, **kwargs) -> None:
        self._started = time.perf_counter()

    def on_job_end(self, config, job_return, **kwargs) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        out = Path(config.hydra.runtime.output_dir)
        failed, err = job_return.status.name != "COMPLETED", job_return._return_value
        # job_status.json tells a failed job from one still running (neither has metrics.json).
        write_json({"status": "failed" if failed else "ok",
                    "error": " ".join(f"{type(err).__name__}: {err}".split())[:500] if failed else None,
                    "wall_time_s": round(time.perf_counter() - getattr(self, "_started", time.perf_counter()), 1)},
                   RunDir(out).job_status)
        if config.get("output") is not None:  # a fold job of a launcher: the table of the run's fold jobs
            write_summary(out.parent, run_dir=Path(config.output))
            return
        # output_dir = <sweep dir>/<subdir>, absolute even in a worker with another working directory.
        write_summary(out.parents[len(Path(str(config.hydra.sweep.subdir)).parts) - 1])

    def on_multirun_end(self, config, **kwargs) -> None:
        if config.get("output") is not None:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        best = write_summary(sweep_dir)
        log.info("Sweep folder: %s | summary: %s", sweep_dir, sweep_dir / "sweep.md")
        if best:
            log.info("%s", best)  # last, so `make hpo` ends naming the folder that holds the best trial
