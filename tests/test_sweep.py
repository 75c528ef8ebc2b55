"""Hydra multirun sweeps through the real CLI (a failing job in this process; the shared sweep and the launchers' in
processes of their own, in the background: conftest): a complete run folder per job, the sweep summary, W&B runs per
job, a failing job, the joblib / submitit launchers; and the summary tables on hand-made run folders (the Optuna
search: test_search.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import ENV, ROOT, cli, in_background, leet, read_metrics, run_process, tiny_overrides, wandb_runs
from kfold_nlp.analysis.compare import write_compare
from kfold_nlp.analysis.runs import run_rows
from kfold_nlp.analysis.sweep import seed_table, sweep_table, write_sweep

RUN_FILES = ["metrics.json", "oof.csv", "folds.csv", "submission.csv", "fold_0/oof.csv", "fold_1/result.json"]


def sweep_args(base: Path, *args: str, logger: str = "none") -> list[str]:
    """A tiny multirun (2 folds) into ``base/sweep``."""
    over = [o if not o.startswith("cv.n_splits") else "cv.n_splits=2"
            for o in tiny_overrides(base / "data", base / "unused", logger=logger)]
    if any(a.startswith("regularizer=") for a in args):  # the sweep's own regularizer
        over = [o for o in over if not o.startswith("regularizer=")]
    return ["cv", "-m", *over, f"hydra.sweep.dir={base / 'sweep'}", *args]


def sweep(base: Path, *args: str, logger: str = "none", check: bool = True):
    """The tiny multirun in this process; returns (sweep folder, what it printed)."""
    return base / "sweep", cli(*sweep_args(base, *args, logger=logger), check=check)


def wandb_states(job_dir: Path) -> list[tuple]:
    """(name, state, exit code) of each offline W&B run: one ``leet`` call per run (grouping is in the
    name, ``<group>-fold<k>``; the full check with conftest.wandb_runs is done once, on the basic sweep)."""
    out = []
    for path in sorted((job_dir / "wandb").glob("offline-run-*")):
        proc = leet(path, "--summary", "--json")
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        out.append((info["name"], info["state"], info["exit_code"]))
    return sorted(out)


def summary_rows(sweep_dir: Path) -> pd.DataFrame:
    return pd.read_csv(sweep_dir / "sweep.csv", dtype={"job": str})


def assert_complete_sweep(sweep_dir: Path, n_jobs: int) -> pd.DataFrame:
    """n complete run folders and a summary whose CV RMSE is each job's metrics.json, best first."""
    for job in range(n_jobs):
        for f in RUN_FILES:
            assert (sweep_dir / str(job) / f).exists(), f"{job}/{f}"
    rows = summary_rows(sweep_dir)
    assert sorted(rows["job"]) == [str(j) for j in range(n_jobs)] and (rows["status"] == "ok").all()
    for row in rows.itertuples():
        cv = read_metrics(sweep_dir / row.job)["cv"]
        assert row.cv_rmse == pytest.approx(cv["rmse"], rel=1e-12) and row.cv_mse == pytest.approx(cv["mse"], rel=1e-12)
        assert row.fold_rmse_sd == pytest.approx(cv["fold_rmse_sd"]) and row.wall_time_s > 0
    assert rows["cv_rmse"].is_monotonic_increasing
    md = (sweep_dir / "sweep.md").read_text()
    assert all(s in md for s in rows["swept"])
    return rows


@in_background
def two_job_sweep(base: Path, data: Path) -> Path:
    """``regularizer=baseline,msd`` with the basic (sequential) launcher and offline W&B, the real entry point in a
    process of its own; shared, read-only (test_notebook imports it too: one sweep a session)."""
    run_process(*sweep_args(base, "regularizer=baseline,msd", logger="wandb"), env=ENV)
    return base / "sweep"


@pytest.mark.process  # the sweep
def test_sweep_writes_a_run_folder_per_job_and_a_summary_best_first(two_job_sweep):
    rows = assert_complete_sweep(two_job_sweep, 2)
    assert set(rows["swept"]) == {"regularizer=baseline", "regularizer=msd"}
    assert all("model=tiny" in o for o in rows["overrides"])  # the CSV keeps every override


@pytest.mark.process  # the sweep
def test_sweep_wandb_runs_are_grouped_per_job_and_never_shared(two_job_sweep):
    seen = set()
    for job, name in [("0", "baseline"), ("1", "msd")]:
        group = f"{name}-{two_job_sweep.name}-job{job}"
        runs = {r["name"]: r for r in wandb_runs(two_job_sweep / job)}
        assert sorted(runs) == [f"{group}-cv", f"{group}-fold0", f"{group}-fold1"]
        assert all(r["group"] == group and r["state"] == "finished" for r in runs.values())
        expected = read_metrics(two_job_sweep / job)["cv"]["rmse"]
        assert runs[f"{group}-cv"]["summary"]["cv/rmse"] == pytest.approx(expected)
        ids = {r["run_id"] for r in runs.values()}
        assert len(ids) == 3 and not ids & seen
        seen |= ids


@pytest.mark.slow
def test_failing_job_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    sweep_dir, proc = sweep(tmp_path, "optimizer=sgd", "trainer.max_grad_norm=null", "optimizer.lr=1e12,1e-3",
                            logger="wandb", check=False)  # job 0 diverges during its first fold
    assert proc.returncode != 0  # Hydra raises the failure after the batch
    rows = summary_rows(sweep_dir).set_index("job")  # written although on_multirun_end never ran
    assert rows.loc["0", "status"] == "failed" and "diverged" in rows.loc["0", "error"]
    assert rows.loc["1", "status"] == "ok"
    assert rows.loc["1", "cv_rmse"] == pytest.approx(read_metrics(sweep_dir / "1")["cv"]["rmse"])
    assert list(rows.index) == ["1", "0"]  # failed last
    assert wandb_states(sweep_dir / "0") == [(f"baseline-{sweep_dir.name}-job0-fold0", "failed", 1)]
    assert {state for _, state, _ in wandb_states(sweep_dir / "1")} == {"finished"}


@in_background
def joblib_sweep(base: Path, data: Path) -> Path:
    """``regularizer=baseline,msd`` with the joblib launcher (2 workers) and offline W&B."""
    run_process(*sweep_args(base, "regularizer=baseline,msd", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                            logger="wandb"), env=ENV)
    return base / "sweep"


@in_background
def submitit_sweep(base: Path, data: Path) -> Path:
    """``regularizer=baseline,msd`` with the submitit_local launcher."""
    run_process(*sweep_args(base, "regularizer=baseline,msd", "hydra/launcher=submitit_local"), env=ENV)
    return base / "sweep"


@pytest.mark.process  # the launcher's jobs
def test_joblib_launcher_runs_jobs_in_parallel_workers_with_offline_wandb(joblib_sweep, two_job_sweep):
    # hydra issue 1320: W&B inside loky workers; offline mode writes real run files there.
    sweep_dir = joblib_sweep
    rows = assert_complete_sweep(sweep_dir, 2).set_index("job")
    basic = summary_rows(two_job_sweep).set_index("job")
    expected = basic.loc[["0", "1"], "cv_rmse"].tolist()
    assert rows.loc[["0", "1"], "cv_rmse"].tolist() == pytest.approx(expected, rel=1e-3)
    for job, name in [("0", "baseline"), ("1", "msd")]:
        group = f"{name}-{sweep_dir.name}-job{job}"
        assert wandb_states(sweep_dir / job) == [(f"{group}-{k}", "finished", 0) for k in ("cv", "fold0", "fold1")]


@pytest.mark.process  # the launcher's jobs
def test_submitit_local_launcher(submitit_sweep):
    sweep_dir = submitit_sweep
    assert_complete_sweep(sweep_dir, 2)
    assert list((sweep_dir / ".submitit").glob("*/*_result.pkl"))


def test_slurm_preset_composes_for_a_gpu_cluster():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min >= 60
    assert launcher.partition and launcher.cpus_per_task >= 1
    assert cfg.hydra.callbacks.sweep_summary._target_ == "kfold_nlp.analysis.callbacks.SweepSummary"


# ---- summary tables on hand-made run folders (no training) ----

def fake_run(folder: Path, overrides: list[str], rmse: float | None, name: str = "baseline", status: str | None = None):
    (folder / ".hydra").mkdir(parents=True)
    seed = int(next((o.split("=")[1] for o in overrides if o.startswith("seed=")), 0))
    (folder / ".hydra" / "config.yaml").write_text(yaml.safe_dump(
        {"name": name, "seed": seed, "regularizer": {"_target_": f"kfold_nlp.regularizers.{name}.X"}}))
    from omegaconf import OmegaConf

    from fake_runs import saved_config

    OmegaConf.save(saved_config({"name": name, "seed": seed,
                                 "regularizer": {"_target_": f"kfold_nlp.regularizers.{name}.X"}}),
                   folder / "run_config.yaml")
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if rmse is not None:
        cv = {"mse": rmse**2, "rmse": rmse, "fold_mse_mean": rmse**2, "fold_mse_sd": 0.01, "fold_rmse_mean": rmse,
              "fold_rmse_sd": 0.02, "train_time_s": 1.0, "wall_time_s": 2.0}
        (folder / "metrics.json").write_text(json.dumps({"cv": cv, "folds": {}}))
    if status:
        error = "boom" if status == "failed" else None
        (folder / "job_status.json").write_text(json.dumps({"status": status, "error": error, "wall_time_s": 0.5}))


def test_seed_sweep_summary_shows_mean_and_sd_over_seeds(tmp_path):
    scores = {"regularizer=msd": [0.50, 0.52, 0.54], "regularizer=rdrop": [0.49, 0.53, 0.57]}
    job = 0
    for config, values in scores.items():
        for seed, rmse in enumerate(values):
            fake_run(tmp_path / str(job), ["model=tiny", config, f"seed={seed}"], rmse, status="ok")
            job += 1
    fake_run(tmp_path / str(job), ["model=tiny", "regularizer=msd", "seed=9"], None)  # still running
    jobs = write_sweep(tmp_path)
    assert jobs["status"].tolist()[-1] == "unfinished" and jobs["job"].tolist()[0] == "3"
    seeds = pd.read_csv(tmp_path / "sweep_seeds.csv").set_index("configuration")
    assert seeds.index.tolist() == ["regularizer=msd", "regularizer=rdrop"]  # by mean
    assert seeds.loc["regularizer=msd", "n_seeds"] == 3
    assert seeds.loc["regularizer=rdrop", "rmse_mean"] == pytest.approx(0.53)
    assert seeds.loc["regularizer=rdrop", "rmse_sd"] == pytest.approx(pd.Series(scores["regularizer=rdrop"]).std())
    assert seeds.loc["regularizer=rdrop", "diff_se"] > abs(seeds.loc["regularizer=rdrop", "diff"])  # noise
    assert "Over seeds" in (tmp_path / "sweep.md").read_text()


def test_no_seed_table_without_repeated_seeds(tmp_path):
    fake_run(tmp_path / "0", ["regularizer=msd"], 0.5)
    fake_run(tmp_path / "1", ["regularizer=rdrop"], 0.4)
    fake_run(tmp_path / "2", ["regularizer=mixout"], None, status="failed")
    jobs = sweep_table(run_rows(tmp_path))
    assert jobs["job"].tolist() == ["1", "0", "2"] and seed_table(jobs) is None
    write_sweep(tmp_path)
    md = (tmp_path / "sweep.md").read_text()
    assert "Failed jobs" in md and "boom" in md and "Over seeds" not in md


def test_compare_table_still_has_one_column_per_experiment(tmp_path):
    for i, (name, rmse) in enumerate([("rdrop", 0.5), ("baseline", 0.6)]):
        fake_run(tmp_path / str(i), [f"experiment={name}"], rmse, name=name)
    table = write_compare(tmp_path)
    assert table.columns.tolist() == ["baseline", "rdrop"]
    assert table.loc["diff", "rdrop"] == pytest.approx(0.25 - 0.36)
    assert (tmp_path / "table.md").exists()


def test_sweep_summary_and_the_end_of_a_sweep_name_the_folder_of_the_best_trial(tmp_path, caplog):
    from omegaconf import OmegaConf

    from kfold_nlp.analysis.callbacks import SweepSummary

    for job, (lr, rmse) in enumerate([("1e-5", 0.6), ("3e-5", 0.5), ("5e-5", 0.7)]):
        fake_run(tmp_path / str(job), ["regularizer=rdrop", f"optimizer.lr={lr}"], rmse, status="ok")
    fake_run(tmp_path / "3", ["regularizer=rdrop", "optimizer.lr=9e-5"], None, status="failed")
    fake_run(tmp_path / "4", ["regularizer=rdrop", "optimizer.lr=2e-5"], None, status="pruned")  # a search's
    line = f"best trial: {tmp_path / '1'} (CV RMSE 0.5000, params optimizer.lr=3e-5)"
    jobs = write_sweep(tmp_path).set_index("job")
    assert jobs.loc["4", "status"] == "pruned" and pd.isna(jobs.loc["4", "cv_rmse"])  # no CV for a pruned trial
    assert line in (tmp_path / "sweep.md").read_text()
    with caplog.at_level("INFO", logger="kfold_nlp.analysis.callbacks"):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert caplog.messages[-1] == line  # the last line a sweep prints
