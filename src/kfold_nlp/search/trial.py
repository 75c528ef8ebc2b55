"""One trial: the project's own CV run in a process of its own (which reports each fold to the study and stops when
pruned), its progress shown fold by fold, its end told to the study: complete, pruned, failed or stopped."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import optuna

from ..analysis.callbacks import write_summary
from ..cv import orphans
from ..errors import Exit
from ..files import read_json, write_json
from ..rundir import RunDir
from ..train.hardware import usable_cores
from ..train.threads import THREADS_ENV
from .report import running_cv, trial_env
from .spec import Param, Pruner, override
from .study import count

log = logging.getLogger("kfold_nlp.search")

POLL_S = 0.5  # how often a trial's folder is looked at for a finished fold

MAX_FAILED_IN_A_ROW = 3  # then the search stops: the config, not the sampled values, is the likelier cause


class TrialFailed(Exception):
    """The trial's run ended with an error (a diverged fold, say): the study records it failed and goes on."""


class BadInput(Exception):
    """The trial's run refused its data or config: every other trial would too, so the search stops."""


class Interrupted(Exception):
    """The search was asked to stop while this trial ran: it is queued again, to continue in its folder."""


@dataclass
class Trials:
    """Runs trials of one search: the trial command is ``python -m kfold_nlp -m <overrides> <sampled values>``,
    one Hydra multirun job into ``<folder>/<trial>``, so a trial folder is a run folder like any other."""

    folder: Path
    overrides: list[str]  # the preset's and the command line's, the same for every trial
    params: list[Param]
    folds: list[int]  # the folds a trial trains, in order
    n_trials: int
    storage: str
    pruner: Pruner
    n_jobs: int = 1
    stopping: threading.Event = field(default_factory=threading.Event)
    failed_in_a_row: int = 0
    _children: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, trial: optuna.Trial) -> float:
        if self.stopping.is_set():  # asked between two trials: this one never starts
            trial.study.stop()
            raise Interrupted("stopped before it started")
        values = {p.key: p.suggest(trial) for p in self.params}
        run_dir = self._run_dir(trial)
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", socket.gethostname())
        tag = f"trial {trial.number} ({self.progress(trial.study)})"
        log.info("%s: %s -> %s", tag, " ".join(override(k, v) for k, v in values.items()), run_dir)
        # the run reports each fold to the study itself (kfold_nlp.search.report): no fold starts after a prune
        proc = self._start(run_dir, [override(k, v) for k, v in values.items()],
                           trial_env(self.storage, trial.study.study_name, trial._trial_id,  # what Trial() takes
                                     asdict(self.pruner)))
        began, shown, ended = time.perf_counter(), 0, False
        try:
            while not ended:
                ended = proc.poll() is not None  # before the last look, so that no finished fold goes unshown
                done = RunDir(run_dir).finished(self.folds)
                for n in range(shown + 1, len(done) + 1):  # folds finish in order; a retry starts with its kept
                    log.info("%s: fold %d done (%d of %d), running CV RMSE %.4f", tag, done[n - 1], n,
                             len(self.folds), running_cv(run_dir, done[:n]))
                shown = max(shown, len(done))
                time.sleep(0 if ended else POLL_S)
        finally:
            with self._lock:
                self._children.discard(proc)
        return self._result(trial, proc.returncode, run_dir, tag, time.perf_counter() - began)

    def progress(self, study: optuna.Study) -> str:
        return f"{count(study)} of {self.n_trials} finished"

    def _run_dir(self, trial: optuna.Trial) -> Path:
        """A new trial's folder is its number; a retried one continues in its original's folder (on this host)."""
        first = trial.user_attrs.get("retry_of")
        if first is not None:
            original = trial.study.get_trials(deepcopy=False)[first].user_attrs
            if original.get("host") == socket.gethostname() and Path(original.get("run_dir", "")).is_dir():
                return Path(original["run_dir"])
        return self.folder / str(trial.number)

    def _start(self, run_dir: Path, values: list[str], env: dict[str, str]) -> subprocess.Popen:
        run_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "kfold_nlp", "-m", *self.overrides, *values,
               f"hydra.sweep.dir={run_dir.parent}", f"hydra.sweep.subdir={run_dir.name}"]
        env = os.environ | orphans.child_env() | {THREADS_ENV: str(max(1, usable_cores() // self.n_jobs))} | env
        with open(run_dir / "trial.log", "ab") as out:  # the trial's console: progress bars, warnings, its error
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with self._lock:
            self._children.add(proc)
        return proc

    def stop(self) -> None:
        """Ctrl-C or SIGTERM on the search: every running trial ends as after ``kill`` (its finished folds kept)."""
        self.stopping.set()
        with self._lock:
            for proc in self._children:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)

    def _result(self, trial: optuna.Trial, code: int, run_dir: Path, tag: str, wall: float) -> float:
        run = RunDir(run_dir)
        if code == Exit.PRUNED and run.pruned.exists():
            write_json({"status": "pruned", "error": None, "wall_time_s": round(wall, 1)}, run.job_status)
            write_summary(self.folder)
            log.info("%s: %s", tag, _last_line(run_dir / "trial.log"))
            raise optuna.TrialPruned()
        if code == 0 and run.is_collected():
            cv = run.read_metrics()["cv"]
            self.failed_in_a_row = 0
            log.info("%s: CV RMSE %.4f in %.0f s -> %s", tag, cv["rmse"], wall, run_dir)
            return cv["rmse"]
        if self.stopping.is_set():
            trial.study.stop()
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise Interrupted(f"stopped after {wall:.0f} s; queued again, to continue in {run_dir}")
        status = run.job_status
        error = read_json(status).get("error") if status.exists() else None
        error = error or _last_line(run_dir / "trial.log") or f"exit status {code}"
        if error.startswith(("DataError", "ConfigError", "error:")):
            raise BadInput(f"trial {trial.number} ({run_dir}): {error}")
        log.warning("%s: failed: %s (its console: %s)", tag, error, run_dir / "trial.log")
        self.failed_in_a_row += 1
        if self.failed_in_a_row >= MAX_FAILED_IN_A_ROW:
            raise BadInput(f"{self.failed_in_a_row} trials failed in a row, the last ({run_dir}): {error}")
        raise TrialFailed(error)


def _last_line(path: Path) -> str | None:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    return lines[-1].strip() if lines else None
