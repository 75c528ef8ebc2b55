"""A run folder remembers what it was made from: a changed train file, or a fold of another run copied in, is refused
in one line by resume and collect, and the folder is left byte for byte as it was."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, tiny_overrides
from kfold_nlp.data import fingerprint

pytestmark = pytest.mark.slow  # every test runs the CLI (see tests/test_tiers.py)


def snapshot_of(folder: Path) -> dict:
    """Every file's bytes (by hash), to prove a refused command changed nothing (but Hydra's own record of the
    latest start, ``.hydra/``, and the log)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix != ".log" and ".hydra" not in p.parts}


@pytest.fixture(scope="module")
def own_run(tiny_data, tmp_path_factory) -> Path:
    """A finished tiny run on the user's own copy of the tiny set (no params.json: never regenerated), so that the
    tests may change its train file and put it back."""
    base = tmp_path_factory.mktemp("own")
    (base / "data").mkdir()
    for name in ("train.csv", "test.csv"):
        shutil.copy(tiny_data / name, base / "data" / name)
    cli("cv", *tiny_overrides(base / "data", base / "run"))
    return base / "run"


@pytest.fixture
def train_file(own_run):
    """The run's train file, restored after the test whatever it did to it."""
    path = own_run.parent / "data" / "train.csv"
    original = path.read_bytes()
    yield path
    path.write_bytes(original)


def test_a_run_records_its_train_files_fingerprint_and_each_fold_what_it_was_made_from(own_run):
    saved = json.loads((own_run / fingerprint.NAME).read_text())
    train = pd.read_csv(own_run.parent / "data" / "train.csv")
    assert saved["rows"] == len(train) and saved["sha256"] == hashlib.sha256(
        (own_run.parent / "data" / "train.csv").read_bytes()).hexdigest()
    made = fingerprint.made_from(own_run)
    for k in range(3):
        assert json.loads((own_run / f"fold_{k}" / "result.json").read_text())["made_from"] == made
    assert "made_from" not in json.loads((own_run / "metrics.json").read_text())["folds"]["0"]


@pytest.mark.parametrize("change, what", [
    (lambda t: t.assign(excerpt=t["excerpt"] + " And then some."), "texts differ"),
    (lambda t: t.assign(target=t["target"] + 0.001), "targets differ"),
    (lambda t: t.iloc[:-1], "48 rows then, 47 now"),
])
@pytest.mark.parametrize("command", ["resume", "collect"])
def test_a_changed_train_file_is_refused_by_resume_and_collect(own_run, train_file, change, what, command):
    change(pd.read_csv(train_file, dtype={"id": str})).to_csv(train_file, index=False)
    before = snapshot_of(own_run)
    if command == "resume":
        proc = cli("cv", f"resume={own_run}", check=False)
    else:
        proc = cli("collect", own_run, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("error:"))
    assert line == (f"error: {train_file}: the train file changed since {own_run} started ({what}); put the "
                    f"original back, or start a new run")
    assert snapshot_of(own_run) == before
    assert (own_run / ".hydra" / "config.yaml").read_text() == (own_run / "run_config.yaml").read_text()


def test_bytes_that_the_run_does_not_read_may_change(own_run, train_file):
    """A column the run does not read (a note added by the user) changes the bytes, not the fingerprint's columns:
    collect goes on, with a warning."""
    before = (own_run / "oof.csv").read_bytes()
    pd.read_csv(train_file, dtype={"id": str}).assign(note="checked").to_csv(train_file, index=False)
    proc = cli("collect", own_run)
    assert "its bytes changed since this run started, but not the columns the run reads" in proc.stderr
    assert (own_run / "oof.csv").read_bytes() == before


def test_a_fold_copied_in_from_a_run_with_another_config_is_refused(own_run, tiny_run, tmp_path):
    """tiny_run has the same rows and folds (same generated set) but another data.path: its fold 1 would pass every
    id check, yet it was not trained under this run's config."""
    run = tmp_path / "run"
    shutil.copytree(own_run, run)
    (run / "metrics.json").unlink()  # collect may not even start from a result-looking folder's leftovers
    shutil.rmtree(run / "fold_1")
    shutil.copytree(tiny_run / "fold_1", run / "fold_1")
    before = snapshot_of(run)
    proc = cli("collect", run, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {run / 'fold_1' / 'result.json'}: this fold was trained on another config than {run}; retrain it "
        f"(delete fold_1/result.json and resume)")
    assert snapshot_of(run) == before and not (run / "metrics.json").exists()


def test_a_run_folder_from_before_fingerprints_gets_one_and_still_refuses_changed_targets(own_run, train_file,
                                                                                          tmp_path):
    run = tmp_path / "run"
    shutil.copytree(own_run, run)
    (run / fingerprint.NAME).unlink()
    for k in range(3):  # folds from before fingerprints carry no record either
        result = run / f"fold_{k}" / "result.json"
        record = {k: v for k, v in json.loads(result.read_text()).items() if k != "made_from"}
        result.write_text(json.dumps(record, indent=2) + "\n")  # as files.write_json writes it
    table = pd.read_csv(train_file, dtype={"id": str})
    table.assign(target=table["target"] + 0.001).to_csv(train_file, index=False)
    proc = cli("collect", run, check=False)
    assert proc.returncode == 2 and "targets differ, first at data row 1" in proc.stderr
    assert not (run / fingerprint.NAME).exists()  # nothing written by a refused command
    table.to_csv(train_file, index=False)
    cli("collect", run)
    assert (run / fingerprint.NAME).is_file()
