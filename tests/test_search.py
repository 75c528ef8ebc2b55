"""The Optuna search (kfold_nlp.search): a study that survives a kill, trials pruned after a fold, parallel trials,
a killed search's trial retried, the presets, the dashboard; the trials are real runs of the project's CLI (each
in a process of its own: the search starts them), and so is each whole search here, in the background (conftest)."""

from __future__ import annotations

import json
import math
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import ENV, ROOT, cli, in_background, read_metrics, run_process
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


def load(base: Path) -> optuna.Study:
    return optuna.load_study(study_name="test", storage=f"sqlite:///{base / 'search' / 'study.db'}")


def assert_complete_trials_match_their_folders(study: optuna.Study) -> None:
    """Each complete trial's value is the CV RMSE in its own run folder's metrics.json."""
    for t in study.get_trials(states=(TrialState.COMPLETE,)):
        run_dir = Path(t.user_attrs["run_dir"])
        assert t.value == pytest.approx(read_metrics(run_dir)["cv"]["rmse"], rel=1e-12), t.number
        assert sorted(t.intermediate_values) == [1, 2, 3]  # one report per fold
        assert t.intermediate_values[3] == pytest.approx(t.value, rel=1e-9)  # the running CV ends at the CV


def best_folder(proc) -> Path:
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


# ---- whole searches through the CLI (each in a process of its own, started in the background: conftest) ----

def search_process(base: Path, preset: str, *args: str) -> SimpleNamespace:
    """``kfold-nlp hpo`` in another process, into ``base``: (base, the finished process)."""
    return SimpleNamespace(base=base, proc=run_process(*command(base, preset, *args)[3:], env=ENV))


@in_background
def pruning_search(base: Path, data: Path) -> SimpleNamespace:
    """A search of 2 queued trials into a storage the user named, the median pruner judging after 1 complete: the
    second predicts about the mean, far worse from fold 0."""
    storage = f"sqlite:///{base / 'search' / 'study.db'}"
    (base / "search").mkdir()
    study = optuna.create_study(study_name="test", storage=storage)  # a storage the user named, trials queued
    for alpha in (1.0, 1000.0):
        study.enqueue_trial({"model.estimator.alphas": alpha, "model.estimator.min_df": 2})
    return search_process(base, "tfidf_ridge", "hpo.n_trials=2", "hpo.pruner.name=median",
                          "hpo.pruner.n_startup_trials=1", f"hpo.storage={storage}")


@pytest.mark.process  # the search and its trials
def test_a_trial_far_worse_at_fold_0_is_pruned_after_it(pruning_search):
    base, proc = pruning_search.base, pruning_search.proc
    study = load(base)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED]
    pruned = study.trials[1]
    assert list(pruned.intermediate_values) == [1]  # reported fold 0, then stopped
    assert pruned.intermediate_values[1] > 1.5 * max(t.intermediate_values[1] for t in study.trials[:1])
    run_dir = Path(pruned.user_attrs["run_dir"])
    assert (run_dir / "fold_0" / "result.json").exists() and not (run_dir / "fold_1" / "result.json").exists()
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "oof.csv").exists()  # no CV claimed
    marker = json.loads((run_dir / "pruned.json").read_text())
    assert marker["folds_done"] == 1 and marker["running_cv_rmse"] == pytest.approx(pruned.intermediate_values[1])
    rows = pd.read_csv(base / "search" / "sweep.csv", dtype={"job": str}).set_index("job")
    assert rows.loc["1", "status"] == "pruned" and math.isnan(rows.loc["1", "cv_rmse"])
    assert list(rows.loc[["0"], "status"]) == ["ok"]
    assert_complete_trials_match_their_folders(study)
    best = best_folder(proc)
    assert best == Path(study.best_trial.user_attrs["run_dir"]) and (best / "metrics.json").exists()
    assert "trial 1 (1 of 2 finished): pruned after 1 of 3 folds" in proc.stderr


@in_background
def stopped_search(base: Path, data: Path) -> SimpleNamespace:
    """A search of one trial sent SIGTERM while the trial trains (after its fold 0), then started again: the first
    start's exit status and stderr, the study then, fold 0's result's mtime; the second start."""
    kept = base / "search" / "0" / "fold_0" / "result.json"
    first = subprocess.Popen(command(base, "baseline", *TINY, "hpo.n_trials=1", "hpo.pruner.name=none"), cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.time() + 600
        while not kept.exists():
            assert first.poll() is None and time.time() < deadline, first.communicate()
            time.sleep(0.1)
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
        first.wait()
    states = [t.state for t in load(base).trials]
    stopped = SimpleNamespace(returncode=first.returncode, stderr=err, states=states,
                              metrics=(base / "search" / "0" / "metrics.json").exists(),
                              kept_at=kept.stat().st_mtime_ns)
    again = search_process(base, "baseline", *TINY, "hpo.n_trials=1", "hpo.pruner.name=none")
    return SimpleNamespace(base=base, kept=kept, stopped=stopped, proc=again.proc)


@pytest.mark.process  # SIGTERM to a search, and the trials
def test_a_search_stopped_mid_trial_resumes_it_in_its_folder(stopped_search):
    """SIGTERM while the trial trains (after its fold 0): it is queued again and, on the next start, continues in
    its folder with its finished fold kept; the study ends with its trials complete in the one storage."""
    first, base = stopped_search.stopped, stopped_search.base
    assert first.returncode == Exit.TERMINATED, first.stderr[-3000:]
    assert "stopped: 0 of 1 finished; continue with the same command" in first.stderr
    assert first.states == [TrialState.FAIL, TrialState.WAITING]
    assert not first.metrics

    study = load(base)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1
    retried = study.trials[1]
    assert retried.user_attrs["retry_of"] == 0 and retried.params == study.trials[0].params
    assert retried.user_attrs["run_dir"] == study.trials[0].user_attrs["run_dir"]  # continued in its folder
    assert stopped_search.kept.stat().st_mtime_ns == first.kept_at  # fold 0 kept, not trained again
    assert_complete_trials_match_their_folders(study)
    assert best_folder(stopped_search.proc) == Path(study.best_trial.user_attrs["run_dir"])


@in_background
def parallel_search(base: Path, data: Path) -> SimpleNamespace:
    """2 trials, 2 at once."""
    return search_process(base, "tfidf_ridge", "hpo.n_trials=2", "hpo.n_jobs=2", "hpo.pruner.name=none")


@pytest.mark.process  # the search and its trials
def test_parallel_trials_share_the_cores_and_the_study(parallel_search):
    study = load(parallel_search.base)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 2 and len({t.user_attrs["run_dir"] for t in done}) == 2
    first, second = sorted(done, key=lambda t: t.datetime_start)[:2]
    assert second.datetime_start < first.datetime_complete  # two trials at once
    assert_complete_trials_match_their_folders(study)


@in_background
def shared_storage_searches(base: Path, data: Path) -> SimpleNamespace:
    """Two searches at once (two machines) into one storage, each with its own folder: a/ and b/."""
    storage = f"sqlite:///{base / 'shared.db'}"
    args = command(base, "tfidf_ridge", "hpo.n_trials=2", "hpo.pruner.name=none", f"hpo.storage={storage}")
    both = [subprocess.Popen([*args, f"hpo.dir={base / side}"], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV) for side in ("a", "b")]
    errors = [proc.communicate(timeout=900)[1] for proc in both]
    return SimpleNamespace(storage=storage, returncodes=[proc.returncode for proc in both], errors=errors)


@pytest.mark.process  # two searches, and their trials
def test_two_searches_sharing_one_storage_fill_one_study(shared_storage_searches):
    """What two machines do with one shared storage: each runs trials into its own folder, the study ends with
    n_trials finished (one more at most, when both finish at once), every trial's folder on its own side."""
    run = shared_storage_searches
    assert run.returncodes == [0, 0], run.errors[0][-3000:] + run.errors[1][-3000:]
    study = optuna.load_study(study_name="test", storage=run.storage)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert 2 <= len(done) <= 3 and {Path(t.user_attrs["run_dir"]).parent.name for t in done} == {"a", "b"}
    assert_complete_trials_match_their_folders(study)


@in_background
def orphaned_trial_search(base: Path, data: Path) -> SimpleNamespace:
    """A study whose trial a killed search left RUNNING (its heartbeat a minute old), then a search of 1 trial."""
    search_spec = specs.load("tfidf_ridge", ["hpo.study=test", "hpo.heartbeat_s=1"])
    study = open_study(search_spec, base / "search", {
        "overrides": sorted(["model=tfidf_ridge", *data_overrides(base)]), "params": search_spec.params})
    orphan = study.ask()
    params = {p.key: p.suggest(orphan) for p in specs.space(search_spec.params)}
    study._storage.record_heartbeat(orphan._trial_id)  # what the killed search's heartbeat thread last wrote,
    db = sqlite3.connect(base / "search" / "study.db")  # a minute ago (> 4 heartbeats): no wait here
    with db:
        db.execute("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-60 seconds') WHERE trial_id = ?",
                   (orphan._trial_id,))
    db.close()
    search_process(base, "tfidf_ridge", "hpo.n_trials=1", "hpo.heartbeat_s=1", "hpo.pruner.name=none")
    return SimpleNamespace(base=base, params=params)


@pytest.mark.process  # the search and its trial
def test_a_trial_left_running_by_a_killed_search_is_retried(orphaned_trial_search):
    """``kill -9`` of a search leaves its trial RUNNING: once its heartbeat is older than the grace period, the next
    start fails it and runs its parameters again."""
    study = load(orphaned_trial_search.base)
    assert study.trials[0].state == TrialState.FAIL
    retried = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(retried) == 1 and retried[0].user_attrs["retry_of"] == 0
    assert retried[0].params == orphaned_trial_search.params


@pytest.mark.slow
def test_bad_trial_overrides_are_one_line_before_any_trial(tmp_path):
    proc = cli(*command(tmp_path, "tfidf_ridge", "cv.n_splitz=3")[3:], check=False)  # refused: no trial starts
    assert proc.returncode == Exit.BAD_INPUT and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert proc.stderr.startswith("error: ") and "cv.n_splitz" in proc.stderr
    assert not (tmp_path / "search").exists()
