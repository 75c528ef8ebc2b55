"""The Optuna search (kfold_nlp.search): a study that survives a kill, trials pruned after a fold, parallel trials,
a killed search's trial retried, the presets, the dashboard; the trials are real runs of the project's CLI."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import ROOT, read_metrics
from kfold_nlp.errors import ConfigError, Exit
from kfold_nlp.search import spec as specs
from kfold_nlp.search.run import trial_config
from kfold_nlp.search.study import open_study

optuna.logging.set_verbosity(optuna.logging.ERROR)


def data_overrides(base: Path, n_train: int = 120) -> list[str]:
    return [f"data.path={base / 'data' / 'train.csv'}", f"data.test_path={base / 'data' / 'test.csv'}",
            f"data.generate.n_train={n_train}", "data.generate.n_test=6", "cv.n_splits=3", "logger=none"]


TINY = ["model=tiny", "trainer.epochs=3", "trainer.batch_size=8", "trainer.eval_every=4"]  # folds of a few seconds


def command(base: Path, preset: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "kfold_nlp.cli", "hpo", preset, *data_overrides(base), f"hpo.dir={base / 'search'}",
            "hpo.study=test", *args]


def search(base: Path, preset: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(base, preset, *args), cwd=ROOT, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def load(base: Path) -> optuna.Study:
    return optuna.load_study(study_name="test", storage=f"sqlite:///{base / 'search' / 'study.db'}")


def assert_complete_trials_match_their_folders(study: optuna.Study) -> None:
    """Each complete trial's value is the CV RMSE in its own run folder's metrics.json."""
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run_dir = Path(t.user_attrs["run_dir"])
        assert t.value == pytest.approx(read_metrics(run_dir)["cv"]["rmse"], rel=1e-12), t.number
        assert sorted(t.intermediate_values) == [1, 2, 3]  # one report per fold
        assert t.intermediate_values[3] == pytest.approx(t.value, rel=1e-9)  # the running CV ends at the CV


def best_folder(proc: subprocess.CompletedProcess) -> Path:
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("best trial: ")]
    assert lines, proc.stderr[-2000:]
    return Path(lines[-1].removeprefix("best trial: "))


# ---- the search space, the presets, the study's identity (no trial runs) ----

def test_hydra_sweep_syntax_becomes_optuna_suggestions():
    params = specs.space({"optimizer.lr": "tag(log, interval(1e-5, 1e-4))", "model.head_dropout": "interval(0, 0.3)",
                          "regularizer.k": "choice(2, 4, 8)", "trainer.epochs": "int(interval(1, 4))",
                          "x.y": "range(2, 10, 2)"})
    kinds = {p.key: (p.kind, p.log) for p in params}
    assert kinds == {"optimizer.lr": ("float", True), "model.head_dropout": ("float", False),
                     "regularizer.k": ("categorical", False), "trainer.epochs": ("int", False), "x.y": ("int", False)}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        v = {p.key: p.suggest(trial) for p in params}
        assert 1e-5 <= v["optimizer.lr"] <= 1e-4 and 0 <= v["model.head_dropout"] <= 0.3
        assert v["regularizer.k"] in (2, 4, 8) and v["trainer.epochs"] in range(1, 5) and v["x.y"] in (2, 4, 6, 8)
        study.tell(trial, 0.0)
    assert specs.override("optimizer.lr", 1 / 3) == "optimizer.lr=0.3333333333333333"  # every digit: a resume matches


@pytest.mark.parametrize("text", ["interval(1, 1)", "tag(log, interval(0, 1))", "3", "interval(1,"])
def test_a_bad_search_range_is_one_line(text):
    with pytest.raises(ConfigError) as err:
        specs.space({"optimizer.lr": text})
    assert str(err.value).startswith(f"params.optimizer.lr: {text}") and "\n" not in str(err.value)


def test_a_wrong_search_key_is_one_line_naming_it():
    with pytest.raises(ConfigError, match=r"hpo.n_trialz=3: n_trialz: Key 'n_trialz' not in 'Search'"):
        specs.load("rdrop", ["hpo.n_trialz=3"])
    with pytest.raises(ConfigError, match="hpo.pruner.name=mean: not a pruner"):
        specs.load("rdrop", ["hpo.pruner.name=mean"])
    with pytest.raises(ConfigError, match="no such search preset; one of baseline, msd, rdrop, tfidf_ridge"):
        specs.load("rdropp", [])


@pytest.mark.parametrize("preset", sorted(p.stem for p in (ROOT / "conf" / "hpo").glob("*.yaml")))
def test_every_preset_searches_keys_its_trials_have(preset, tmp_path):
    search = specs.load(preset, [])
    params = specs.space(search.params)
    sample = [specs.override(p.key, p.low if p.kind != "categorical" else p.choices[0]) for p in params]
    cfg = trial_config([*search.overrides, *data_overrides(tmp_path)], sample)  # composed and validated as a run
    for p, value in zip(params, sample):
        assert str(cfg_value(cfg, p.key)) == value.split("=", 1)[1], p.key


def cfg_value(cfg, key):
    from omegaconf import OmegaConf

    return OmegaConf.select(cfg, key)


def test_a_study_resumed_with_other_trial_overrides_is_refused(tmp_path):
    search = specs.load("tfidf_ridge", ["hpo.study=s"])
    open_study(search, tmp_path, {"overrides": ["cv.n_splits=3", "model=tfidf_ridge"], "params": search.params})
    open_study(search, tmp_path, {"overrides": ["cv.n_splits=3", "model=tfidf_ridge"], "params": search.params})
    with pytest.raises(ConfigError, match=r"study s was started with other overrides \(cv.n_splits=3 "
                                          r"model=tfidf_ridge, not cv.n_splits=5 model=tfidf_ridge\)"):
        open_study(search, tmp_path, {"overrides": ["cv.n_splits=5", "model=tfidf_ridge"], "params": search.params})


def test_the_dashboard_reads_the_study(tmp_path):
    """``optuna-dashboard <storage>`` serves this storage: its API lists the study (through WSGI, no server)."""
    from wsgiref.util import setup_testing_defaults

    from optuna_dashboard import wsgi

    search = specs.load("tfidf_ridge", ["hpo.study=seen"])
    study = open_study(search, tmp_path, {"overrides": ["model=tfidf_ridge"], "params": search.params})
    study.enqueue_trial({"model.estimator.alphas": 1.0, "model.estimator.min_df": 2})
    app = wsgi(f"sqlite:///{tmp_path / 'study.db'}")

    def get(path: str) -> dict:
        out, environ = {}, {"PATH_INFO": path}
        setup_testing_defaults(environ)
        body = app(environ, lambda status, headers, *exc: out.update(status=status))
        assert out["status"].startswith("200"), path
        return json.loads(b"".join(body))

    summaries = get("/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["seen"]
    trials = get(f"/api/studies/{summaries[0]['study_id']}")["trials"]
    assert [t["state"] for t in trials] == ["Waiting"]


# ---- whole searches through the CLI ----

@pytest.mark.slow
def test_a_trial_far_worse_at_fold_0_is_pruned_after_it(tmp_path):
    storage = f"sqlite:///{tmp_path / 'search' / 'study.db'}"
    (tmp_path / "search").mkdir()
    study = optuna.create_study(study_name="test", storage=storage)  # a storage the user named, trials queued
    for alpha in (1.0, 1.5, 1000.0):  # the last predicts about the mean: far worse from fold 0
        study.enqueue_trial({"model.estimator.alphas": alpha, "model.estimator.min_df": 2})
    proc = search(tmp_path, "tfidf_ridge", "hpo.n_trials=3", "hpo.pruner.name=median", "hpo.pruner.n_startup_trials=2",
                  f"hpo.storage={storage}")
    study = load(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = study.trials[2]
    assert list(pruned.intermediate_values) == [1]  # reported fold 0, then stopped
    assert pruned.intermediate_values[1] > 1.5 * max(t.intermediate_values[1] for t in study.trials[:2])
    run_dir = Path(pruned.user_attrs["run_dir"])
    assert (run_dir / "fold_0" / "result.json").exists() and not (run_dir / "fold_1" / "result.json").exists()
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "oof.csv").exists()  # no CV claimed
    marker = json.loads((run_dir / "pruned.json").read_text())
    assert marker["folds_done"] == 1 and marker["running_cv_rmse"] == pytest.approx(pruned.intermediate_values[1])
    rows = pd.read_csv(tmp_path / "search" / "sweep.csv", dtype={"job": str}).set_index("job")
    assert rows.loc["2", "status"] == "pruned" and math.isnan(rows.loc["2", "cv_rmse"])
    assert list(rows.loc[["0", "1"], "status"]) == ["ok", "ok"]
    assert_complete_trials_match_their_folders(study)
    best = best_folder(proc)
    assert best == Path(study.best_trial.user_attrs["run_dir"]) and (best / "metrics.json").exists()
    assert "trial 2 (2 of 3 finished): pruned after 1 of 3 folds" in proc.stderr


@pytest.mark.slow
def test_a_search_killed_after_trial_2_of_4_resumes_to_4_trials(tmp_path):
    """SIGTERM while the third trial trains: that trial is queued again and, on the next start, continues in its
    folder with its finished fold kept; the study ends with 4 complete trials in the one storage."""
    cmd = command(tmp_path, "baseline", *TINY, "hpo.n_trials=4", "hpo.pruner.name=none")
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kept = tmp_path / "search" / "2" / "fold_0" / "result.json"
    deadline = time.time() + 600
    while not kept.exists():
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.1)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == Exit.TERMINATED, err[-3000:]
    assert "stopped: 2 of 4 finished; continue with the same command" in err
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.WAITING]
    assert not (tmp_path / "search" / "2" / "metrics.json").exists()
    kept_at = kept.stat().st_mtime_ns

    proc = search(tmp_path, "baseline", *TINY, "hpo.n_trials=4", "hpo.pruner.name=none")
    study = load(tmp_path)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    retried = study.trials[3]
    assert retried.user_attrs["retry_of"] == 2 and retried.params == study.trials[2].params
    assert retried.user_attrs["run_dir"] == study.trials[2].user_attrs["run_dir"]  # continued in its folder
    assert kept.stat().st_mtime_ns == kept_at  # fold 0 kept, not trained again
    assert_complete_trials_match_their_folders(study)
    assert best_folder(proc) == Path(study.best_trial.user_attrs["run_dir"])


@pytest.mark.slow
def test_parallel_trials_share_the_cores_and_the_study(tmp_path):
    search(tmp_path, "tfidf_ridge", "hpo.n_trials=4", "hpo.n_jobs=2", "hpo.pruner.name=none")
    study = load(tmp_path)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 4 and len({t.user_attrs["run_dir"] for t in done}) == 4
    first, second = sorted(done, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete  # two trials at once
    assert_complete_trials_match_their_folders(study)


@pytest.mark.slow
def test_two_searches_sharing_one_storage_fill_one_study(tmp_path):
    """What two machines do with one shared storage: each runs trials into its own folder, the study ends with
    n_trials finished (one more at most, when both finish at once), every trial's folder on its own side."""
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    both = [subprocess.Popen([*command(tmp_path, "tfidf_ridge", "hpo.n_trials=4", "hpo.pruner.name=none",
                                       f"hpo.storage={storage}"), f"hpo.dir={tmp_path / side}"],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for side in ("a", "b")]
    for proc in both:
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    study = optuna.load_study(study_name="test", storage=storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 4 <= len(done) <= 5 and {Path(t.user_attrs["run_dir"]).parent.name for t in done} == {"a", "b"}
    assert_complete_trials_match_their_folders(study)


@pytest.mark.slow
def test_a_trial_left_running_by_a_killed_search_is_retried(tmp_path):
    """``kill -9`` of a search leaves its trial RUNNING: once its heartbeat is older than the grace period, the next
    start fails it and runs its parameters again."""
    search_spec = specs.load("tfidf_ridge", ["hpo.study=test", "hpo.heartbeat_s=1"])
    study = open_study(search_spec, tmp_path / "search", {
        "overrides": sorted(["model=tfidf_ridge", *data_overrides(tmp_path)]), "params": search_spec.params})
    orphan = study.ask()
    params = {p.key: p.suggest(orphan) for p in specs.space(search_spec.params)}
    study._storage.record_heartbeat(orphan._trial_id)  # what the killed search's heartbeat thread last wrote
    time.sleep(5)  # > 4 heartbeats
    search(tmp_path, "tfidf_ridge", "hpo.n_trials=1", "hpo.heartbeat_s=1", "hpo.pruner.name=none")
    study = load(tmp_path)
    assert study.trials[0].state == TrialState.FAIL
    retried = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(retried) == 1 and retried[0].user_attrs["retry_of"] == 0 and retried[0].params == params


@pytest.mark.slow
def test_bad_trial_overrides_are_one_line_before_any_trial(tmp_path):
    proc = search(tmp_path, "tfidf_ridge", "cv.n_splitz=3", check=False)
    assert proc.returncode == Exit.BAD_INPUT and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and "cv.n_splitz" in proc.stderr
    assert not (tmp_path / "search").exists()
