"""Trackers chosen by config: what the runner logs (in-memory tracker), the CSV files, the presets, no wandb import."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ENV, ROOT, in_background, read_metrics, tiny_overrides
from kfold_nlp.config.paths import CONFIG_DIR
from kfold_nlp.config.rules import check_params
from kfold_nlp.cv.fold import saved_run_id
from kfold_nlp.cv.prepare import adopt_run_config, check_run_config
from kfold_nlp.cv.run import run as run_cv
from kfold_nlp.errors import ConfigError
from kfold_nlp.track.base import Run, Tracker, make, tracked, tracker_class
from kfold_nlp.track.csv import CsvTracker
from kfold_nlp.track.memory import MemoryTracker
from kfold_nlp.track.wandb import WandbTracker

START = {"name": "exp-fold0", "group": "exp", "job_type": "fold0", "config": {"seed": 1}}


def compose_cfg(*overrides):
    with initialize_config_dir(CONFIG_DIR, version_base="1.3"):
        return compose("config", ["model=tiny", *overrides])


def test_a_cv_run_logs_each_evaluation_and_the_best_score_to_its_fold_run(tmp_path, memory_runs):
    """One fold and the ``-cv`` run: names, group, job type, every evaluation, the summaries metrics.json has."""
    overrides = [o for o in tiny_overrides(tmp_path / "data", tmp_path, n_train=24) if not o.startswith("hydra.")]
    cfg = compose_cfg(*overrides, "logger=memory", "name=exp", "cv.folds=[0]", "trainer.eval_every=1")
    run_cv(cfg, tmp_path / "run")
    metrics = read_metrics(tmp_path / "run")
    fold, summary = memory_runs
    assert [(r.name, r.group, r.job_type, r.state) for r in memory_runs] == [
        ("exp-fold0", "exp", "fold0", "finished"), ("exp-cv", "exp", "cv", "finished")]
    logged = [h["val/mse"] for h in fold.history if "val/mse" in h]
    assert len(logged) >= 2 and min(logged) == pytest.approx(metrics["folds"]["0"]["mse"])  # every evaluation
    assert fold.summary["best/val_mse"] == pytest.approx(metrics["folds"]["0"]["mse"])
    assert fold.config["seed"] == cfg.seed and "cpu" in fold.config["hardware"]
    assert summary.summary["cv/rmse"] == pytest.approx(metrics["cv"]["rmse"])
    pd.testing.assert_frame_equal(summary.tables["oof"], pd.read_csv(tmp_path / "run" / "oof.csv", dtype={"id": str}))


def test_a_tracked_block_that_raises_finishes_its_run_as_failed(memory_runs):
    with pytest.raises(KeyError), tracked(MemoryTracker(), run_dir=".", **START):
        raise KeyError("fold")
    with tracked(MemoryTracker(), run_dir=".", **START | {"name": "exp-fold1"}):
        pass
    assert [r.state for r in memory_runs] == ["failed", "finished"]


def test_csv_tracker_writes_metrics_summary_and_tables_and_continues_a_run_by_its_id(tmp_path):
    run = CsvTracker(tags=["t"]).start(run_dir=tmp_path, **START)
    run.log({"val/mse": 0.5, "train/loss": 0.7}, step=2)
    run.update_summary({"best/val_mse": 0.5})
    run.table("oof", pd.DataFrame({"id": ["a"], "pred": [0.1]}))
    folder = tmp_path / "csv" / "exp-fold0"
    assert json.loads((folder / "run.json").read_text())["state"] == "running"  # until finished: a killed run says so
    run.finish()
    again = CsvTracker(tags=["t"]).start(run_dir=tmp_path, **START, run_id=run.id)  # from a snapshot: appended
    again.log({"val/mse": 0.4}, step=3)
    again.update_summary({"best/val_mse": 0.4, "best/step": 3})
    again.finish(failed=True)
    assert pd.read_csv(folder / "metrics.csv").values.tolist() == [[2, "val/mse", 0.5], [2, "train/loss", 0.7],
                                                                    [3, "val/mse", 0.4]]
    assert json.loads((folder / "summary.json").read_text()) == {"best/val_mse": 0.4, "best/step": 3}
    info = json.loads((folder / "run.json").read_text())
    assert (info["group"], info["job_type"], info["tags"], info["state"], info["config"]) == (
        "exp", "fold0", ["t"], "failed", {"seed": 1})
    assert pd.read_csv(folder / "oof.csv").values.tolist() == [["a", 0.1]]
    CsvTracker().start(run_dir=tmp_path, **START)  # a retried fold (no id): replaces the earlier attempt
    assert list(folder.iterdir()) == [folder / "run.json"]


@pytest.mark.parametrize("choice", sorted(p.stem for p in (ROOT / "conf" / "logger").glob("*.yaml")))
def test_every_logger_preset_passes_its_rules_and_builds_its_tracker(choice):
    cfg = compose_cfg(f"logger={choice}")
    check_params("logger", tracker_class(cfg.logger).params, cfg.logger)
    assert isinstance(make(cfg.logger), tracker_class(cfg.logger))


def test_old_spellings_still_mean_what_they_did(tmp_path):
    """``logger.mode=disabled`` tracks nothing; a run folder saved before ``_target_`` (a resume, ``make collect``)
    tracks with W&B; the default is W&B offline."""
    disabled = make(compose_cfg("logger.mode=disabled").logger)
    assert isinstance(disabled, WandbTracker) and type(disabled.start(run_dir=tmp_path, **START)) is Run
    assert isinstance(make(OmegaConf.create({"mode": "offline", "project": "p", "entity": None, "tags": []})),
                      WandbTracker)
    default = compose_cfg().logger
    assert default._target_ == "kfold_nlp.track.wandb.WandbTracker" and default.mode == "offline"


def test_only_rank_zero_tracks(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    assert type(make(compose_cfg("logger=csv").logger)) is Tracker


def test_a_resume_with_another_logger_takes_that_logger_whole(tmp_path):
    check_run_config(compose_cfg(), tmp_path)  # the run started with W&B
    adopted = adopt_run_config(compose_cfg(f"resume={tmp_path}", "logger=csv"), [f"resume={tmp_path}", "logger=csv"])
    assert OmegaConf.to_container(adopted.logger) == {"_target_": "kfold_nlp.track.csv.CsvTracker", "tags": []}
    state = {"tracker": "kfold_nlp.track.wandb.WandbTracker", "tracker_id": "w-1"}
    assert saved_run_id(adopted, state) is None  # a W&B id means nothing to the CSV tracker
    assert saved_run_id(compose_cfg(), {"wandb_id": "w-0"}) == "w-0"  # a snapshot from before trackers


def test_an_unknown_logger_key_is_refused_in_one_line():
    cfg = compose_cfg("logger=csv", "+logger.mode=offline")
    with pytest.raises(ConfigError, match=r"^logger\.mode: not a key of this logger \(known: tags\)$"):
        check_params("logger", tracker_class(cfg.logger).params, cfg.logger)


def test_only_the_wandb_tracker_imports_wandb():
    package = ROOT / "src" / "kfold_nlp"
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            if any(n == "wandb" or n.startswith("wandb.") for n in names):
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"track/wandb.py"}


@in_background
def runner_imports(folder: Path, data: Path) -> str:
    """Whether a fresh interpreter that imports the runner, the launcher, collect, ensemble and the W&B tracker has
    wandb loaded."""
    code = ("import sys, kfold_nlp.cv.run, kfold_nlp.cv.launch, kfold_nlp.cv.collect, kfold_nlp.analysis.ensemble, "
            "kfold_nlp.track.wandb; print('wandb' in sys.modules)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                          env=ENV).stdout


@pytest.mark.process  # a fresh interpreter's imports (this one has wandb loaded)
def test_importing_the_runner_does_not_import_wandb(runner_imports):
    assert runner_imports.strip() == "False"


class Killed(Exception):
    """Stands in for a SIGKILL right after a snapshot was written."""


def test_a_fold_continued_from_its_snapshot_logs_the_evaluations_before_it_again(tmp_path, memory_runs):
    """A killed process's tracker may have lost what it logged (W&B offline kept 7 bytes of it): the continued run
    gets the snapshot's evaluations first, so its curve is the uninterrupted run's."""
    from kfold_nlp.train import snapshot

    overrides = [o for o in tiny_overrides(tmp_path / "data", tmp_path, n_train=24) if not o.startswith("hydra.")]
    base = [*overrides, "logger=memory", "name=exp", "cv.folds=[0]", "trainer.eval_every=1", "trainer.epochs=3",
            "trainer.snapshot_every=1"]
    run_cv(compose_cfg(*base), tmp_path / "reference")
    reference = [(h["_step"], h["val/mse"]) for h in memory_runs[0].history if "val/mse" in h]
    memory_runs.clear()
    save = snapshot.save

    def save_then_kill(*args, **kwargs):
        save(*args, **kwargs)
        if kwargs["state"]["step"] == 2:
            raise Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(snapshot, "save", save_then_kill)
        with pytest.raises(Killed):
            run_cv(compose_cfg(*base), tmp_path / "run")
    memory_runs.clear()  # a new process: the killed one's tracker is gone
    run_cv(compose_cfg(*base, f"resume={tmp_path / 'run'}"), tmp_path / "run")
    fold = next(r for r in memory_runs if r.name == "exp-fold0")
    logged = [(h["_step"], h["val/mse"]) for h in fold.history if "val/mse" in h]
    assert len(reference) > 2 and [s for s, _ in logged] == [s for s, _ in reference]
    np.testing.assert_allclose([v for _, v in logged], [v for _, v in reference], rtol=1e-6)


def test_the_csv_tracker_replays_only_the_steps_its_file_lacks(tmp_path):
    run = CsvTracker().start(run_dir=tmp_path, **START)
    run.log({"val/mse": 0.5}, 1)
    again = CsvTracker().start(run_dir=tmp_path, **START, run_id=run.id)
    again.replay([(1, {"val/mse": 0.5}), (2, {"val/mse": 0.4})])
    rows = (tmp_path / "csv" / "exp-fold0" / "metrics.csv").read_text().splitlines()
    assert rows == ["step,metric,value", "1,val/mse,0.5", "2,val/mse,0.4"]
