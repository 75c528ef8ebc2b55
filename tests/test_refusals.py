"""Bad input to the newer commands ends with one line and the README's exit status, leaving nothing half-made; and
the new user's frictions fixed since (a typo'd key, a classical run's name, a search that resumes, make's words)."""

from __future__ import annotations

import errno
import logging
import subprocess

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf

from conftest import ROOT, cli
from kfold_nlp.errors import Exit


def _one_line(proc, code: int, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


@pytest.fixture
def csv40(tmp_path):
    """40 rows whose targets fill 6 equal-width bins."""
    rng = np.random.default_rng(0)
    path = tmp_path / "train.csv"
    pd.DataFrame({"id": [f"r{i}" for i in range(40)],
                  "excerpt": [" ".join(rng.choice(["cat", "dog", "reads", "the", "old", "book"], 8))
                              for _ in range(40)],
                  "target": np.linspace(-3, 1, 40)}).to_csv(path, index=False)
    return path


def base(csv, run_dir, *more):
    return ["cv", "data=csv", f"data.path={csv}", "model=tiny", "cv.n_splits=2", "trainer.epochs=1",
            "trainer.precision=fp32", "logger.mode=disabled", f"hydra.run.dir={run_dir}", *more]


@pytest.mark.slow
@pytest.mark.parametrize("fraction", ["0.05", "0.9"])
def test_a_holdout_the_bins_cannot_split_is_one_line_and_leaves_no_folder(tmp_path, csv40, fraction):
    run = tmp_path / "run"
    proc = cli(*base(csv40, run, f"cv.holdout={fraction}"), check=False)
    _one_line(proc, Exit.BAD_INPUT, f"cv.holdout={fraction}", "target bins", "give a fraction from")
    assert not run.exists()


@pytest.mark.slow
def test_a_run_folder_under_a_file_is_the_machines_fault_in_one_line(tmp_path, csv40):
    (tmp_path / "file").write_text("not a folder\n")
    proc = cli(*base(csv40, tmp_path / "file" / "run"), check=False)
    _one_line(proc, Exit.ENVIRONMENT, str(tmp_path / "file"), "start the run again")


@pytest.mark.slow
def test_a_typo_in_a_key_is_one_line_naming_the_nearest_key(tmp_path, csv40):
    proc = cli(*base(csv40, tmp_path / "run", "trainer.epoch=2"), check=False)
    _one_line(proc, Exit.BAD_INPUT, "trainer.epoch", "did you mean trainer.epochs?")
    proc = cli(*base(csv40, tmp_path / "run", "+trainer.epoch=2"), check=False)  # added, and read by nothing
    _one_line(proc, Exit.BAD_INPUT, "trainer.epoch: not a key of trainer", "did you mean trainer.epochs?")
    proc = cli(*base(csv40, tmp_path / "run", "model=tinny"), check=False)
    _one_line(proc, Exit.BAD_INPUT, "model=tinny", "did you mean tiny?")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_classical_run_is_named_after_its_model_and_has_no_refit(tmp_path, csv40):
    run = tmp_path / "tfidf"
    proc = cli(*base(csv40, run, "model=tfidf_ridge"))
    assert "bf16" not in proc.stdout + proc.stderr and "regularizer" not in proc.stdout
    assert OmegaConf.load(run / "run_config.yaml").name == "tfidf_ridge"
    proc = cli("refit", str(run), check=False)
    _one_line(proc, Exit.BAD_INPUT, "scikit-learn run has no refit")
    assert not (run / "refit").exists()


def test_the_holdout_file_takes_the_id_column_the_data_names(tmp_path, caplog):
    from kfold_nlp.data.folds import assign

    ids, target = pd.Series([f"u{i}" for i in range(40)]), np.linspace(-3, 1, 40)
    cv = OmegaConf.create({"seed": 1, "bins": 6, "n_splits": 2, "holdout": str(tmp_path / "held.csv")})
    pd.DataFrame({"uid": ["u1", "u7"]}).to_csv(cv.holdout, index=False)
    assert set(ids[assign(ids, target, cv, id_col="uid") == -1]) == {"u1", "u7"}
    with pytest.raises(Exception, match="no 'key' column"):  # neither its column nor a list of ids
        assign(ids, target, cv, id_col="key")
    pd.DataFrame({"uid": [f"u{i}" for i in range(36)]}).to_csv(cv.holdout, index=False)
    with caplog.at_level(logging.WARNING, logger="kfold_nlp"):
        folds = assign(ids, target, OmegaConf.merge(cv, {"bins": 1}), id_col="uid")
    assert (folds >= 0).sum() == 4 and "the smallest fold trains on 2 row(s)" in caplog.text


def test_a_full_disk_under_torch_save_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    import shutil

    from kfold_nlp.train import snapshot

    def full(obj, path):
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed (unexpected pos 64 vs 0)")

    monkeypatch.setattr(snapshot.torch, "save", full)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 0))
    with pytest.raises(OSError) as err:
        snapshot._torch_save({}, tmp_path / "snapshot" / "optimizer.pt", tmp_path / "x.pt")
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "snapshot" / "optimizer.pt")


def test_a_fold_job_that_hit_the_machine_is_reported_as_the_machines_fault(tmp_path):
    from kfold_nlp.cv.launch import machine_fault
    from kfold_nlp.files import write_json

    write_json({"status": "failed", "error": "ValueError: a bug", "wall_time_s": 1},
               tmp_path / ".jobs/0/job_status.json")
    assert machine_fault(tmp_path) is None
    write_json({"status": "failed", "error": "OSError: [Errno 28] No space left on device: 'x'", "wall_time_s": 1},
               tmp_path / ".jobs/1/job_status.json")
    assert machine_fault(tmp_path).startswith("OSError: [Errno 28]")


def test_a_restarted_search_draws_new_values(tmp_path):
    from kfold_nlp.search import spec
    from kfold_nlp.search.study import open_study

    search = spec.load("tfidf_ridge", [f"hpo.dir={tmp_path}"])
    search.study = "s"
    params = spec.space(search.params)
    drawn = []
    for _ in range(2):  # two starts of one search, each asking for two trials
        study = open_study(search, tmp_path, {"overrides": [], "params": dict(search.params)})
        for _ in range(2):
            trial = study.ask()
            drawn.append(tuple(p.suggest(trial) for p in params))
            study.tell(trial, 1.0)
    assert len(set(drawn)) == len(drawn), drawn


@pytest.mark.process  # make (it refuses before any Python starts)
def test_make_refuses_a_word_the_target_does_not_read():
    proc = subprocess.run(["make", "-n", "compare", "EXP=smoke"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode != 0 and "make compare does not read EXP" in proc.stderr
    proc = subprocess.run(["make", "-n", "cv", "EXP=smoke", "ARGS=model=tiny"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 0 and "experiment=smoke model=tiny" in proc.stdout


def test_a_search_preset_that_is_not_yaml_is_one_line(tmp_path):
    from kfold_nlp.errors import ConfigError
    from kfold_nlp.search import spec

    bad = tmp_path / "bad.yaml"
    bad.write_text("params: {model.estimator.alphas: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(.* at line \d+\)$"):
        spec.load(str(bad), [])


def test_a_search_storage_under_a_file_is_the_machines_fault_in_one_line(tmp_path):
    from kfold_nlp.search import spec
    from kfold_nlp.search.study import open_study

    (tmp_path / "file").write_text("not a folder\n")
    search = spec.load("tfidf_ridge", [f"hpo.storage=sqlite:///{tmp_path / 'file' / 'sub' / 'study.db'}"])
    with pytest.raises(OSError) as err:
        open_study(search, tmp_path, {"overrides": [], "params": dict(search.params)})
    from kfold_nlp.errors import environment_fault

    fault = environment_fault(err.value)
    assert fault is not None and fault.exit == Exit.ENVIRONMENT and str(tmp_path / "file") in str(fault)
