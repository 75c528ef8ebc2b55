"""Folds as parallel Hydra jobs (joblib, submitit) into one run folder, then one collect: the sequential run's
result."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import psutil
import pytest

from conftest import ENV, ROOT, cli, in_background, read_metrics, run_process, tiny_overrides
from kfold_nlp.cv import lock
from kfold_nlp.train import hardware, threads

pytestmark = pytest.mark.slow  # every test here runs the CLI (see tests/test_tiers.py)


def fold_jobs(folder: Path, data: Path, launcher: str) -> Path:
    run_process("cv", *tiny_overrides(data, folder / "run", logger="wandb"), f"launcher={launcher}", env=ENV)
    return folder / "run"


@in_background
def joblib_fold_jobs(folder: Path, data: Path) -> Path:
    """The tiny run, its folds as parallel jobs of ``launcher=joblib``."""
    return fold_jobs(folder, data, "joblib")


@in_background
def submitit_local_fold_jobs(folder: Path, data: Path) -> Path:
    """The tiny run, its folds as parallel jobs of ``launcher=submitit_local``."""
    return fold_jobs(folder, data, "submitit_local")


@pytest.mark.process  # the launcher's fold jobs (its multirun starts them)
@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_fold_jobs_give_the_sequential_result(launcher, joblib_fold_jobs, submitit_local_fold_jobs,
                                                       tiny_run):
    run_dir = {"joblib": joblib_fold_jobs, "submitit_local": submitit_local_fold_jobs}[launcher]
    oof, reference = pd.read_csv(run_dir / "oof.csv"), pd.read_csv(tiny_run / "oof.csv")
    assert oof["id"].tolist() == reference["id"].tolist()
    np.testing.assert_allclose(oof["pred"], reference["pred"], atol=1e-5)
    assert read_metrics(run_dir)["cv"]["rmse"] == pytest.approx(read_metrics(tiny_run)["cv"]["rmse"], abs=1e-5)
    assert sorted(p.name for p in (run_dir / ".jobs").iterdir() if p.name.isdigit()) == ["0", "1", "2"]
    assert (run_dir / "submission.csv").exists() and not list(run_dir.glob("fold_*/snapshot"))
    # the fold jobs' table: each finished, with its fold's score; and each fold's line in the run's own log
    jobs = pd.read_csv(run_dir / ".jobs" / "sweep.csv").sort_values("fold")
    folds = read_metrics(run_dir)["folds"]
    assert jobs["fold"].tolist() == [0, 1, 2] and set(jobs["state"]) == {"finished"}
    np.testing.assert_allclose(jobs["val_rmse"], [folds[k]["rmse"] for k in "012"])
    log = (run_dir / "run.log").read_text()
    assert all(f"fold {k}: val RMSE {folds[str(k)]['rmse']:.4f}" in log for k in range(3)), log[-2000:]
    # the three jobs run side by side on this machine's cores: each takes its share, never every core
    share = threads.split_cores(min(3, hardware.usable_cores()))
    assert [read_metrics(run_dir)["folds"][k]["threads"] for k in "012"] == [share] * 3


def test_collect_rebuilds_a_run_and_names_the_unfinished_folds(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir, ignore=shutil.ignore_patterns("wandb"))
    for name in ("oof.csv", "metrics.json", "submission.csv"):
        (run_dir / name).unlink()
    cli("collect", run_dir)
    for name in ("oof.csv", "submission.csv"):
        assert (run_dir / name).read_bytes() == (tiny_run / name).read_bytes()
    assert read_metrics(run_dir)["cv"]["rmse"] == read_metrics(tiny_run)["cv"]["rmse"]

    (run_dir / "fold_2" / "result.json").unlink()
    proc = cli("collect", run_dir, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: {run_dir}: fold(s) 2 not finished (no fold_<k>/result.json); "
                                   f"train them with RESUME={run_dir}")


@in_background
def killed_launcher(folder: Path, data: Path) -> SimpleNamespace:
    """``kill -9`` of a ``launcher=joblib`` start once its fold jobs train (for as good as ever): the jobs' pids,
    those of the processes it had started still alive two minutes later, and the launcher's stderr."""
    run_dir, err = folder / "run", folder / "stderr"
    overrides = [o if o != "trainer.epochs=1" else "trainer.epochs=100000" for o in tiny_overrides(data, run_dir)]
    with err.open("wb") as stderr:
        launcher = subprocess.Popen([sys.executable, "-m", "kfold_nlp", *overrides, "launcher=joblib"], cwd=ROOT,
                                    stdout=subprocess.DEVNULL, stderr=stderr, env=ENV)
    started = []
    try:
        while len(list(run_dir.glob(f"fold_*/{lock.HOLDER}"))) < min(3, hardware.usable_cores()):  # jobs training
            assert launcher.poll() is None, err.read_text()[-3000:]
            time.sleep(0.5)
        started = psutil.Process(launcher.pid).children(recursive=True)
        jobs = {int(p.read_text()) for p in run_dir.glob(f"fold_*/{lock.HOLDER}")}
        launcher.kill()
        launcher.wait()
        _, alive = psutil.wait_procs(started, timeout=120)
        alive = [" ".join(p.cmdline()) for p in alive]
    finally:
        launcher.kill()
        for proc in started:
            if proc.is_running():
                proc.kill()
    return SimpleNamespace(run_dir=run_dir, jobs=jobs, started={p.pid for p in started}, alive=alive,
                           stderr=err.read_text())


@pytest.mark.process  # kill -9 of a launcher, and its jobs
def test_the_fold_jobs_of_a_launcher_killed_outright_end_with_it(killed_launcher):
    """``kill -9`` of a ``launcher=joblib`` start while its fold jobs train (for as good as ever): its multirun
    process and every worker that one started end soon after, the jobs through their SIGTERM line, and no fold of
    the folder is left locked."""
    run = killed_launcher
    assert run.jobs <= run.started
    assert not run.alive, run.alive
    assert run.stderr.count(f"terminated: finished folds are kept in {run.run_dir}") == len(run.jobs)
    assert all(lock.is_free(fold) for fold in run.run_dir.glob("fold_*"))
